"""`recsys monitor ...`: monitoring reports from the request log, the retraining decision, Evidently's UI."""

import json
import os
import sys
from pathlib import Path

import typer

from components.config import Config, absolute_paths
from components.errors import RecsysError
from components.processes import http_status, launch, owned_pid, stop_process, wait_ready, write_pid_file
from recsys.common import console, errors_as_exit, serve_in_foreground, state

PROJECT_ROOT = Path(__file__).resolve().parents[1]

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

    from monitoring.reports import generate_reports

    config = state(ctx).config
    reference = reference or Path(config.paths.data_dir) / "canonical"
    out = out or Path(config.monitoring.reports_dir) / pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S")
    with errors_as_exit():
        summary = generate_reports(config, reference, log or config.serving.request_log, out, embeddings_dir=embeddings,
                                 **_windows(current_start=current_start, current_end=current_end,
                                            baseline_start=baseline_start, baseline_end=baseline_end,
                                            reference_start=reference_start, reference_end=reference_end))
    console.print(json.dumps(summary["signals"], indent=2))
    console.print(f"reports in [bold]{out}[/]: open {out / 'index.html'}")


@app.command()
def decide(
    ctx: typer.Context,
    summary: Path = typer.Argument(..., help="summary.json written by `recsys monitor report`."),
    execute: bool = typer.Option(False, "--execute/--dry-run",
                                 help="Run the monitoring pipeline over the report's windows (reports, policy, "
                                      "retrain through the training pipeline), locally or on kfp.host."),
    reference: Path | None = typer.Option(
        None, help="With --execute: canonical tables to monitor against (default: ingest the configured data)."),
) -> None:
    """Apply the retraining policy (thresholds, cooldown, de-duplication) to a report's signals; with --execute,
    run the monitoring pipeline over the same windows, as the cluster's schedule does."""
    from monitoring.data import MonitoringError
    from monitoring.policy import decide as decide_only

    config = state(ctx).config
    with errors_as_exit():
        if not summary.exists():
            raise MonitoringError(f"summary file {summary} does not exist; run `recsys monitor report` first")
        report = json.loads(summary.read_text(encoding="utf-8"))
        if not execute:
            decision = decide_only(report["signals"], config).as_dict()
        else:
            from monitoring.retraining import run_monitoring

            bounds = {f"{name}_{end}": bound for name, window in report["windows"].items()
                      for end, bound in window.items() if bound}
            run = run_monitoring(config, reference, **bounds)
            if run.decision is None:
                console.print(f"monitoring pipeline submitted: run {run.outcome['run_id']} on {run.outcome['host']}")
                return
            decision = run.decision
            console.print(f"monitoring pipeline {run.outcome['status']}: reports in {run.report_dir}")
    console.print(json.dumps(decision, indent=2, default=str))
    console.print(f"[bold]{'RETRAIN' if decision['retrain'] else 'no retrain'}[/]: {decision['reason']}"
                  + ("" if execute else " (dry run: nothing recorded)"))
    if (decision.get("outcome") or {}).get("status") == "failed":
        console.print(f"[bold red]the retrain failed:[/] {decision['outcome']['error']}")
        raise typer.Exit(code=1)


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


# ---- Evidently's UI over the monitoring workspace ---------------------------------------------------------
class UiError(RecsysError):
    """Evidently's UI could not be started or stopped."""


def ui_files(config: Config, port: int) -> tuple[Path, Path]:
    """(PID file, log file) of the UI server on `port` (under paths.artifacts_dir/evidently_ui)."""
    folder = Path(absolute_paths(config, PROJECT_ROOT).paths.artifacts_dir) / "evidently_ui"
    return folder / f"ui_{port}.pid", folder / f"ui_{port}.log"


def ui_url(config: Config, port: int | None = None) -> str:
    return f"http://{config.serving.host}:{port or config.monitoring.ui_port}"


def start_ui(config: Config, workspace: Path | None = None, port: int | None = None, detach: bool = True,
             timeout_s: float = 60.0) -> int:
    """Start `evidently ui` over the workspace (default: the configured one) on serving.host and wait until it
    answers; returns its PID. detach=True: own session and a PID file (stop with stop_ui)."""
    from monitoring.workspace import workspace_dir

    config = absolute_paths(config, PROJECT_ROOT)
    port = port or config.monitoring.ui_port
    folder = Path(workspace or workspace_dir(config)).resolve()
    if not folder.is_dir():
        raise UiError(f"the Evidently workspace {folder} does not exist; run `recsys monitor report` or "
                      "`recsys simulate` first, or pass --workspace")
    url = ui_url(config, port)
    if http_status(f"{url}/api/projects") != 0:
        raise UiError(f"something already answers at {url}; stop it (`recsys monitor ui-stop --port {port}`) "
                      "or pass --port")
    pid_path, log_path = ui_files(config, port)
    env = dict(os.environ, DO_NOT_TRACK="1")  # no usage telemetry from the UI
    cmd = [str(Path(sys.executable).parent / "evidently"), "ui", "--workspace", str(folder), "--host",
           config.serving.host, "--port", str(port)]
    proc = launch(cmd, log_path, env=env, detach=detach)
    wait_ready("evidently ui", lambda: http_status(f"{url}/api/projects") == 200, proc, timeout_s, log_path,
               error=UiError)
    if detach:
        write_pid_file(pid_path, proc.pid)
    return proc.pid


def stop_ui(config: Config, port: int | None = None) -> bool:
    """Stop the detached UI on `port` named in its PID file; False if none was running."""
    pid_path = ui_files(config, port or config.monitoring.ui_port)[0]
    pid = owned_pid(pid_path, "evidently")
    if pid is None:
        return False
    stop_process(pid)
    pid_path.unlink(missing_ok=True)
    return True


@app.command()
def ui(
    ctx: typer.Context,
    port: int | None = typer.Option(None, help="Port on serving.host (default: monitoring.ui_port)."),
    workspace: Path | None = typer.Option(
        None, help="Evidently workspace folder (default: monitoring.workspace_dir, else <reports_dir>/workspace; "
        "a simulation's is <out>/monitoring/workspace)."),
    detach: bool = typer.Option(False, "--detach", help="Run in the background and write a PID file."),
) -> None:
    """Serve Evidently's UI over the monitoring workspace: a project per deployment, its dashboard of the
    signals over time and every run's drift reports. Ctrl-C stops it (or `recsys monitor ui-stop`)."""
    config = state(ctx).config
    with errors_as_exit():
        pid = start_ui(config, workspace, port, detach=detach)
    console.print(f"Evidently UI at [bold]{ui_url(config, port)}[/] (pid {pid})")
    if detach:
        console.print(f"stop with `recsys monitor ui-stop{f' --port {port}' if port else ''}`")
        return
    serve_in_foreground(pid, "UI", ui_files(config, port or config.monitoring.ui_port)[1], stop_process)


@app.command("ui-stop")
def ui_stop(
    ctx: typer.Context,
    port: int | None = typer.Option(None, help="Port of the UI to stop (default: monitoring.ui_port)."),
) -> None:
    """Stop the detached Evidently UI started by `recsys monitor ui --detach`."""
    with errors_as_exit():
        stopped = stop_ui(state(ctx).config, port)
    console.print("Evidently UI stopped" if stopped else "no detached Evidently UI running")
