"""`recsys monitor ...`: monitoring reports from the request log, and the retraining decision."""

import json
from pathlib import Path

import typer

from recsys.common import console, errors_as_exit, state

app = typer.Typer(help="Drift, quality and fairness reports; the retraining policy.", no_args_is_help=True)

_WINDOW_HELP = "UTC timestamp or ISO date; default: see monitoring.window_hours"


def _windows(**bounds: str | None) -> dict[str, str]:
    return {k: v for k, v in bounds.items() if v}


@app.command()
def report(
    ctx: typer.Context,
    reference: Path | None = typer.Option(
        None, help="Canonical tables (the training reference) (default <data_dir>/canonical)"),
    log: str | None = typer.Option(None, help="Request log, SQLite file or postgresql:// URL "
                                               "(default: serving.request_log)."),
    out: Path | None = typer.Option(None, help="Report folder (default: monitoring.reports_dir/<timestamp>)."),
    embeddings: Path | None = typer.Option(None, help="Folder with item_ids.npy + item_embeddings.npy."),
    current_start: str | None = typer.Option(None, help=_WINDOW_HELP),
    current_end: str | None = typer.Option(None, help=_WINDOW_HELP),
    baseline_start: str | None = typer.Option(None, help=_WINDOW_HELP),
    baseline_end: str | None = typer.Option(None, help=_WINDOW_HELP),
    reference_start: str | None = typer.Option(None, help=_WINDOW_HELP),
    reference_end: str | None = typer.Option(None, help=_WINDOW_HELP),
) -> None:
    """Write the reports (index.html, Evidently drift pages, summary.json) and print the signals."""
    import pandas as pd

    from components.monitor import run_monitoring

    config = state(ctx).config
    reference = reference or Path(config.paths.data_dir) / "canonical"
    out = out or Path(config.monitoring.reports_dir) / pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S")
    with errors_as_exit():
        summary = run_monitoring(config, reference, log or config.serving.request_log, out, embeddings_dir=embeddings,
                                 **_windows(current_start=current_start, current_end=current_end,
                                            baseline_start=baseline_start, baseline_end=baseline_end,
                                            reference_start=reference_start, reference_end=reference_end))
    console.print(json.dumps(summary["signals"], indent=2))
    console.print(f"reports in [bold]{out}[/]: open {out / 'index.html'}")


@app.command()
def decide(
    ctx: typer.Context,
    summary: Path = typer.Argument(..., help="summary.json written by `recsys monitor report`."),
    execute: bool = typer.Option(False, "--execute/--dry-run", help="Start the training pipeline if due."),
) -> None:
    """Apply the retraining policy (thresholds, cooldown, de-duplication) to a report's signals."""
    from monitoring.data import MonitoringError
    from monitoring.policy import decide as decide_only
    from monitoring.trigger import decide_and_trigger

    config = state(ctx).config
    with errors_as_exit():
        if not summary.exists():
            raise MonitoringError(f"summary file {summary} does not exist; run `recsys monitor report` first")
        signals = json.loads(summary.read_text(encoding="utf-8"))["signals"]
        decision = (decide_and_trigger(signals, config, out_dir=summary.parent) if execute
                    else decide_only(signals, config))
    console.print(json.dumps(decision.as_dict(), indent=2, default=str))
    console.print(f"[bold]{'RETRAIN' if decision.retrain else 'no retrain'}[/]: {decision.reason}"
                  + ("" if execute else " (dry run: nothing recorded)"))


@app.command()
def release(
    ctx: typer.Context,
    decision_id: str = typer.Argument(..., help="The decision whose retrain has ended."),
    status: str = typer.Option("succeeded", help="Outcome to record."),
) -> None:
    """Release the retrain lock of a submitted (cluster) retrain once it has finished."""
    from monitoring.policy import release_retrain

    with errors_as_exit():
        release_retrain(state(ctx).config, decision_id, {"status": status, "mode": "manual"})
    console.print(f"released retrain {decision_id}")
