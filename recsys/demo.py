"""`recsys demo`: the main job end to end on the embedded default (what `make demo` runs).

Training pipeline on MovieLens-100K with the KFP local runner (ingest -> validate -> features -> train ->
evaluate -> gate -> compress -> deploy -> promote), then the recommendation API in front of Feast and
Triton, left running, with a sample call and its answer.
"""

import json
import urllib.request
from pathlib import Path

import typer

from recsys.common import console, errors_as_exit, state

REPORTS = {
    ("validate-op", "data_docs"): "index.html",
    ("evaluate-op", "report"): "",
    ("compress-op", "report"): "",
    ("train-op", "curve"): "",
}


def _sample_call(url: str, body: dict, headers: dict[str, str]) -> dict:
    request = urllib.request.Request(f"{url}/recommend", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **headers}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def demo(
    ctx: typer.Context,
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the API after the pipeline."),
) -> None:
    """Run the training pipeline on MovieLens-100K, then start the API and show a sample call."""
    from components.deploy import ensure_server
    from pipelines.runner import run_pipeline
    from recsys.serve_api import api_url, auth_headers, sample_curl, sample_request, start_api, stop_api

    config = state(ctx).config
    with errors_as_exit():
        result = run_pipeline("training", config)
    console.rule("training pipeline: artifacts")
    for task, outputs in result["artifacts"].items():
        for output, path in outputs.items():
            console.print(f"  {task:<12} {output:<14} {path}", soft_wrap=True)
    console.rule("reports")
    for (task, output), page in REPORTS.items():
        path = result["artifacts"].get(task, {}).get(output)
        if path:
            console.print(f"  {task:<12} {output:<14} {Path(path) / page if page else path}", soft_wrap=True)
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
    console.print_json(json.dumps(_sample_call(api_url(config), body, headers)))
