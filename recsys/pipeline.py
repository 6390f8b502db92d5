"""`recsys pipeline ...`: compile for the KFP dashboard, run locally, submit or schedule on a KFP host."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from recsys.common import console, errors_as_exit, state

app = typer.Typer(help="Compile, run locally, submit and schedule the KFP pipelines.", no_args_is_help=True)


MARKS = {"SUCCESS": "[green]ok[/]  ", "FAILURE": "[red]FAIL[/]", "SKIPPED": "[dim]skip[/]"}


def step_printer() -> Callable[[Any], None]:
    """An `on_step` for `run_pipeline`: one line per step as it ends (status, seconds, its figure); while a step
    runs, a transient spinner names it (on a terminal only)."""
    spinner = console.status("")

    def on_step(step: Any) -> None:
        if step.status == "RUNNING":
            spinner.update(f"{step.label} running")
            spinner.start()
            return
        spinner.stop()
        seconds = f"{step.seconds:6.1f} s" if step.seconds is not None else " " * 8
        console.print(f"  {MARKS.get(step.status, step.status)} {escape(step.label):<17} {seconds}  "
                      f"{escape(step.figure)}", highlight=False, soft_wrap=True)

    return on_step


def pipelines() -> dict[str, Any]:
    """The project's pipelines by name (imported lazily: building one imports every component)."""
    from monitoring.pipeline import MONITORING
    from pipelines.training import TRAINING

    return {p.name: p for p in (TRAINING, MONITORING)}


def pipeline_named(name: str) -> Any:
    """The pipeline called `name`; a clear error naming the choices otherwise."""
    from pipelines.runner import PipelineError

    known = pipelines()
    if name not in known:
        raise PipelineError(f"unknown pipeline '{name}' (choose {' or '.join(known)})")
    return known[name]


def run_with_progress(name: str, config: Any) -> dict:
    """Run a pipeline locally with one console line per step, then where its overview page and log are."""
    from pipelines.runner import run_pipeline

    console.print(f"[bold]{name} pipeline[/] (KFP local runner)")
    with errors_as_exit():
        result = run_pipeline(pipeline_named(name), config, on_step=step_printer())
    console.print(f"  finished in {result['seconds']:.0f} s", highlight=False)
    console.print(f"  run overview: {Path(result['overview']).as_uri()}", soft_wrap=True, highlight=False)
    console.print(f"  full log:     {result['log']}", soft_wrap=True, highlight=False)
    return result



@app.command("compile")
def compile_(
    ctx: typer.Context,
    out: Path = typer.Option(Path("artifacts/compiled"), help="Folder for the pipeline YAML files."),
) -> None:
    """Write every pipeline's YAML (what the KFP dashboard's 'Upload pipeline' accepts)."""
    from pipelines.runner import compile_pipeline

    config = state(ctx).config
    with errors_as_exit():
        for name, pipeline in pipelines().items():
            console.print(f"{name}: [bold]{compile_pipeline(pipeline, config, out)}[/]")


@app.command()
def run(ctx: typer.Context, name: str = typer.Argument("training", help="training | monitoring")) -> None:
    """Run a pipeline end to end with the KFP local runner: one line per step, then its overview page and log."""
    run_with_progress(name, state(ctx).config)


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
        run_id = submit_pipeline(pipeline_named(name), config, host, experiment or config.kfp.experiment)
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
        job = schedule_pipeline(pipeline_named(name), config, host, experiment or config.kfp.experiment, cron)
    console.print(f"scheduled: recurring run [bold]{job}[/] ({cron}) on {host}")
