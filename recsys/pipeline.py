"""`recsys pipeline ...`: compile for the KFP dashboard, run locally, submit or schedule on a KFP host."""

import importlib.util
from pathlib import Path

import typer
from rich.table import Table

from recsys.common import console, errors_as_exit, state

app = typer.Typer(help="Compile, run locally, submit and schedule the KFP pipelines.", no_args_is_help=True)
NAMES = ("training", "monitoring")


def _available() -> list[str]:
    return [n for n in NAMES if importlib.util.find_spec(f"pipelines.{n}") is not None]


@app.command("compile")
def compile_(
    ctx: typer.Context,
    out: Path = typer.Option(Path("artifacts/compiled"), help="Folder for the pipeline YAML files."),
) -> None:
    """Write every pipeline's YAML (what the KFP dashboard's 'Upload pipeline' accepts)."""
    from pipelines.runner import compile_pipeline

    config = state(ctx).config
    with errors_as_exit():
        for name in _available():
            console.print(f"{name}: [bold]{compile_pipeline(name, config, out)}[/]")


@app.command()
def run(ctx: typer.Context, name: str = typer.Argument("training", help="training | monitoring")) -> None:
    """Run a pipeline end to end with the KFP local runner and print where each artifact landed."""
    from pipelines.runner import run_pipeline

    config = state(ctx).config
    with errors_as_exit():
        result = run_pipeline(name, config)
    table = Table(title=f"{name} pipeline: artifacts ({result['seconds']} s)")
    table.add_column("task")
    table.add_column("output")
    table.add_column("path")
    for task, outputs in result["artifacts"].items():
        for output, path in outputs.items():
            table.add_row(task, output, path)
    console.print(table)


@app.command()
def submit(
    ctx: typer.Context,
    name: str = typer.Argument("training", help="training | monitoring"),
    host: str = typer.Option(..., help="KFP API endpoint, e.g. http://localhost:8080"),
    experiment: str | None = typer.Option(None, help="KFP experiment (default: kfp.experiment)."),
) -> None:
    """Submit a run to a KFP installation (shown in the dashboard)."""
    from pipelines.runner import submit_pipeline

    config = state(ctx).config
    with errors_as_exit():
        run_id = submit_pipeline(name, config, host, experiment or config.kfp.experiment)
    console.print(f"submitted: run [bold]{run_id}[/] on {host}")


@app.command()
def schedule(
    ctx: typer.Context,
    name: str = typer.Argument("monitoring", help="training | monitoring"),
    host: str = typer.Option(..., help="KFP API endpoint."),
    cron: str = typer.Option("0 0 * * * *", help="KFP cron expression (seconds first)."),
    experiment: str | None = typer.Option(None, help="KFP experiment (default: kfp.experiment)."),
) -> None:
    """Create a recurring run on a KFP installation."""
    from pipelines.runner import schedule_pipeline

    config = state(ctx).config
    with errors_as_exit():
        job = schedule_pipeline(name, config, host, experiment or config.kfp.experiment, cron)
    console.print(f"scheduled: recurring run [bold]{job}[/] ({cron}) on {host}")
