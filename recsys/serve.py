"""`recsys serve ...` (the local Triton server, the recommendation API and its keys) and `recsys deploy ...`
(versions, rollback, status)."""

import json
import os
import signal
import time
from pathlib import Path

import typer

from components.processes import stop_process
from recsys import api_key_cmd
from recsys.common import console, errors_as_exit, serve_in_foreground, state

app = typer.Typer(help="Run the local Triton server (the binary from the nvidia-pytriton wheel) and the "
                       "recommendation API (BentoML).", no_args_is_help=True)
app.add_typer(api_key_cmd.app, name="api-key")
deploy_app = typer.Typer(
    help="Deploy serving bundles to Triton, roll back, show the deployment state.", no_args_is_help=True
)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _admin_key_source(build_dir: Path) -> str:
    """Where the Triton admin key comes from (never the key itself)."""
    from serving import triton_admin

    if os.environ.get(triton_admin.ADMIN_KEY_ENV, "").strip():
        return f"${triton_admin.ADMIN_KEY_ENV}"
    return f"{triton_admin.key_file(build_dir)} (mode 600; `recsys deploy` reads it)"


@app.command("triton")
def triton(
    ctx: typer.Context,
    detach: bool = typer.Option(False, "--detach", help="Run in the background and write a PID file."),
) -> None:
    """Start Triton on loopback (explicit model control) and load the live version; Ctrl-C stops it. With
    --detach, a detached server that already runs (e.g. the one the pipeline's deploy step started) is kept."""
    from serving import triton_server as ts
    from serving.deploy import restore_active

    config = state(ctx).config
    settings = ts.settings_from_config(config)
    running = ts.running_pid(settings) if detach else None
    if running is not None and ts.is_ready(settings):
        with errors_as_exit():
            version = restore_active(config)
        console.print(f"Triton already runs at [bold]{settings.grpc_url}[/] (pid {running}), serving "
                      f"{f'version {version}' if version else 'no model yet'}; stop with `recsys serve triton-stop`")
        return
    with errors_as_exit():
        server = ts.start_detached(settings) if detach else ts.start_server(settings)
        try:
            version = restore_active(config)
        except Exception:
            server.stop()
            raise
    live = f"version {version} of 'recommender'" if version else "no model yet (`recsys deploy bundle DIR`)"
    console.print(f"Triton ready at [bold]{settings.grpc_url}[/] (pid {server.pid}), serving {live}")
    console.print(f"model control needs the admin key: {_admin_key_source(settings.build_dir)}")
    if detach:
        console.print(f"PID file {ts.pid_file(settings)}; stop with `recsys serve triton-stop`")
        return
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
        console.print(f"[bold red]tritonserver exited[/] (code {server.process.returncode}); see {settings.log_file}")
        raise typer.Exit(code=1)
    except KeyboardInterrupt:
        console.print("stopping Triton ...")
        server.stop()


@app.command("triton-stop")
def triton_stop(ctx: typer.Context) -> None:
    """Stop the detached Triton server named in the PID file."""
    from serving import triton_server as ts

    settings = ts.settings_from_config(state(ctx).config)
    with errors_as_exit():
        stopped = ts.stop_detached(settings)
    console.print("Triton stopped" if stopped else f"no detached Triton server running ({ts.pid_file(settings)})")


@app.command("api")
def api(
    ctx: typer.Context,
    detach: bool = typer.Option(False, "--detach", help="Run in the background and write a PID file."),
) -> None:
    """Start the recommendation API (BentoML) in front of Feast and Triton; Ctrl-C stops it."""
    from serving.api_server import api_url, log_file, pid_file, sample_curl, start_api

    config = state(ctx).config
    with errors_as_exit():
        pid = start_api(config, detach=detach)
    console.print(f"API ready at [bold]{api_url(config)}[/] (pid {pid}); try:\n{sample_curl(config)}")
    if detach:
        console.print(f"PID file {pid_file(config)}; stop with `recsys serve api-stop`")
        return
    serve_in_foreground(pid, "API server", log_file(config), stop_process)


@app.command("api-stop")
def api_stop(ctx: typer.Context) -> None:
    """Stop the detached API named in the PID file."""
    from serving.api_server import stop_api

    with errors_as_exit():
        stopped = stop_api(state(ctx).config)
    console.print("API stopped" if stopped else "no detached API server running")


@deploy_app.command("bundle")
def deploy_bundle(ctx: typer.Context, bundle_dir: Path = typer.Argument(..., help="Serving bundle folder.")) -> None:
    """Write the bundle as a new version, load and smoke-test it; the previous version stays if it fails."""
    from serving.deploy import deploy_bundle as run

    with errors_as_exit():
        result = run(state(ctx).config, bundle_dir)
    console.print(
        f"version [bold]{result.version}[/] live ({result.variant}, model {result.model_version}, "
        f"{len(result.smoke)} smoke requests passed, {result.duration_s:.1f} s)"
    )


@deploy_app.command("rollback")
def deploy_rollback(
    ctx: typer.Context,
    to_version: int | None = typer.Option(None, "--to", help="Version to make live (default: the previous one)."),
) -> None:
    """Make the previously live version (or --to N) live again."""
    from serving.deploy import rollback

    with errors_as_exit():
        result = rollback(state(ctx).config, to_version)
    console.print(f"rolled back: version [bold]{result.version}[/] live again (was {result.previous})")


@deploy_app.command("status")
def deploy_status(ctx: typer.Context) -> None:
    """The live version (history and server), versions on disk, recent deployments, as JSON."""
    from serving.deploy import status

    with errors_as_exit():
        info = status(state(ctx).config)
    typer.echo(json.dumps(info, indent=2))


@deploy_app.command("cluster-repo")
def deploy_cluster_repo(
    bundle_dir: Path = typer.Argument(..., help="Serving bundle folder."),
    out: Path = typer.Argument(..., help="New folder for the model repository."),
    gpus: list[int] = typer.Option([0], "--gpu", help="GPU ids of the user tower's instance group (repeatable)."),
) -> None:
    """Build a model repository for the official Triton image: the user tower on onnxruntime_onnx, KIND_GPU."""
    from serving.triton_repo import build_cluster_repository

    with errors_as_exit():
        repo = build_cluster_repository(bundle_dir, out, gpus=tuple(gpus))
    console.print(f"cluster model repository (version 1, onnxruntime_onnx on GPUs {gpus}) in [bold]{repo}[/]")
