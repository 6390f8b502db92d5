"""`recsys demo`: the main job end to end on the embedded default (what `make demo` runs).

Training pipeline on MovieLens-100K with the KFP local runner (ingest -> validate -> features -> train ->
evaluate -> gate -> compress -> deploy -> promote), then the recommendation API in front of Feast and
Triton, left running, with a sample call and its answer.
"""

import json
import urllib.request

import typer
from rich import box
from rich.table import Table

from recsys.common import console, errors_as_exit, state

REPORTS = {  # (task, output): what the report is
    ("validate-op", "data_docs"): "data docs",
    ("train-op", "curve"): "training curve",
    ("evaluate-op", "report"): "evaluation",
    ("compress-op", "report"): "compression",
    ("deploy-op", "deployment"): "deployment",
}


def _sample_call(url: str, body: dict, headers: dict[str, str]) -> dict:
    request = urllib.request.Request(f"{url}/recommend", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **headers}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _print_answer(answer: dict) -> None:
    """The sample call's answer as a table: one row per item (the full JSON is what the curl line prints)."""
    source = "model"
    if answer["degraded"]:
        source = f"degraded ({', '.join(answer['reasons'])})"
    elif answer["cold_start"]:
        source = "cold start"
    table = Table(title=f"answer: user {answer['user_id']}, {source}, model version {answer['model_version']}",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("rank", "item_id", "score", "title", "why"):
        table.add_column(column, overflow="fold")
    for item in answer["items"]:
        table.add_row(str(item["rank"]), str(item["item_id"]), f"{item['score']:.4f}", item.get("title") or "",
                      item["explanation"])
    console.print(table)


def demo(
    ctx: typer.Context,
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the API after the pipeline."),
) -> None:
    """Run the training pipeline on MovieLens-100K, then start the API and show a sample call."""
    from recsys.pipeline import run_with_progress
    from serving.api_server import api_url, auth_headers, sample_curl, sample_request, start_api, stop_api
    from serving.deploy import ensure_server

    config = state(ctx).config
    result = run_with_progress("training", config)
    console.print("[bold]reports[/]")
    for (task, output), what in REPORTS.items():
        if path := result["pages"].get(f"{task}/{output}"):
            console.print(f"  {what:<15} {path}", soft_wrap=True, highlight=False)
    if "deploy-op" not in result["artifacts"]:
        console.print("[yellow]the candidate did not beat the champion: the deployed version stays[/]")
    if not serve:
        return
    with errors_as_exit():
        ensure_server(config)
        stop_api(config)
        pid = start_api(config, detach=True)
    console.rule(f"recommendation API on {api_url(config)} (pid {pid}; stop: recsys serve api-stop)")
    body = sample_request(config)
    console.print(sample_curl(config, body), soft_wrap=True, markup=False)
    with errors_as_exit():
        headers = auth_headers(config)
    _print_answer(_sample_call(api_url(config), body, headers))
