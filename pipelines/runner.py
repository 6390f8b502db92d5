"""Compile, run locally (KFP SubprocessRunner), submit and schedule the project's pipelines."""

import contextlib
import logging
import os
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from components.config import Config, absolute_paths, config_to_text
from components.errors import RecsysError
from pipelines.run_view import (
    ANSI,
    EXECUTOR_OUTPUT,
    REPORTS_DIR,
    RunTracker,
    Step,
    TeeToTracker,
    artifact_pages,
    pipeline_steps,
    write_overview,
)

log = logging.getLogger(__name__)
RUN_LOG = "pipeline.log"  # in the run folder: every task's full output


class PipelineError(RecsysError):
    """A pipeline could not be compiled, run or submitted; `run_dir` is the failed local run's folder, if any."""

    def __init__(self, message: str, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir


@dataclass(frozen=True)
class Pipeline:
    """A pipeline the runner compiles, runs locally, submits or schedules: its short name (file names, messages)
    and how its @dsl.pipeline function is built from the resolved config (`pipelines.training.TRAINING`,
    `monitoring.pipeline.MONITORING`)."""

    name: str
    build: Callable[[Config], Callable]


def compile_pipeline(pipeline: Pipeline, config: Config, out_dir: str | Path) -> Path:
    """Write `<out_dir>/<name>_pipeline.yaml`, with the resolved config as the default `config` parameter."""
    from kfp import compiler

    out = Path(out_dir) / f"{pipeline.name}_pipeline.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        pipeline.build(config), package_path=str(out), pipeline_parameters={"config": config_to_text(config)}
    )
    log.info("compiled %s pipeline to %s", pipeline.name, out)
    return out


def task_artifacts(run_dir: Path) -> dict[str, dict[str, str]]:
    """Where each task of a local run wrote its outputs: task name -> output name -> path."""
    artifacts: dict[str, dict[str, str]] = {}
    for task_dir in sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name != REPORTS_DIR):
        outputs = {p.name: str(p) for p in sorted(task_dir.iterdir()) if p.name != EXECUTOR_OUTPUT}
        if outputs:
            artifacts[task_dir.name] = outputs
    return artifacts


@contextmanager
def _output_to(log: TextIO, tracker: RunTracker) -> Iterator[None]:
    """Everything the run writes to stdout (the runner's task logs, each task subprocess's output, C-level writes
    to file descriptor 1), every log record and every Python warning goes to `log`; the tracker reads the
    task-status lines."""
    tee = TeeToTracker(log, tracker)
    root = logging.getLogger()
    handlers = root.handlers[:]
    handler = logging.StreamHandler(tee)  # the orchestrator's own records, in the runner's line format
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d - %(levelname)s - %(message)s", "%H:%M:%S"))
    root.handlers = [handler]
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(log.fileno(), 1)

    def to_log(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 (warnings API)
        log.write(warnings.formatwarning(message, category, filename, lineno, line))

    try:
        with contextlib.redirect_stdout(tee), warnings.catch_warnings():
            warnings.showwarning = to_log
            yield
    finally:
        root.handlers = handlers
        log.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_pipeline(pipeline: Pipeline, config: Config, on_step: Callable[[Step], None] | None = None,
                 arguments: dict[str, str] | None = None) -> dict:
    """Run a pipeline end to end with the KFP local SubprocessRunner (`arguments`: its parameters besides
    `config`).

    The console gets nothing from the run: the full task logs go to `pipeline.log` in the run folder, `on_step`
    hears each step start and end (with its status, seconds and figure), and the run folder gets its overview
    page. Returns the run folder, seconds, steps, log, overview and where each artifact landed."""
    from kfp import local

    name = pipeline.name
    config = absolute_paths(config)
    root = Path(config.paths.pipeline_root)
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / f".{name}-{os.getpid()}-{time.time_ns()}.log"
    tracker = RunTracker([], root, on_step)
    started = time.monotonic()
    failure: str | None = None
    with log_path.open("a", encoding="utf-8", buffering=1) as log_file, _output_to(log_file, tracker):
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
        function = pipeline.build(config)
        tracker.steps[:] = pipeline_steps(function)
        try:
            warnings.filterwarnings("ignore", message=".*(have no effect in the current local runner|base image).*")
            function(config=config_to_text(config), **(arguments or {}))
        except RuntimeError as err:
            failure = ANSI.sub("", str(err))
    tracker.finish()
    seconds = round(time.monotonic() - started, 1)
    run_dir = tracker.run_dir
    if run_dir is not None:
        log_path = log_path.rename(run_dir / RUN_LOG)
    pages = artifact_pages(run_dir, tracker.steps) if run_dir is not None else {}
    overview = write_overview(name, run_dir, tracker.steps, seconds, log_path, pages) if run_dir is not None else None
    if failure is not None:
        where = f"; run overview {overview}" if overview else ""
        raise PipelineError(f"{name} pipeline failed: {failure} (full log: {log_path}{where})", run_dir)
    result = {
        "pipeline": name,
        "run_dir": str(run_dir) if run_dir else None,
        "seconds": seconds,
        "steps": tracker.steps,
        "log": str(log_path),
        "overview": str(overview) if overview else None,
        "pages": {f"{task}/{output}": str(path) for (task, output), path in pages.items()},
        "artifacts": task_artifacts(run_dir) if run_dir else {},
    }
    log.debug("%s pipeline finished in %.1f s; artifacts under %s", name, seconds, run_dir)
    return result


def check_host(host: str, timeout_s: float = 1.0) -> None:
    """Fail fast (within `timeout_s`) with a clear message when `host` is not a reachable KFP API."""
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status != 200:
                raise PipelineError(f"KFP host {host} answered HTTP {response.status} at {url}: is it a KFP API?")
    except urllib.error.HTTPError as err:
        raise PipelineError(f"KFP host {host} answered HTTP {err.code} at {url}: is it a KFP API?") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise PipelineError(f"KFP host {host} does not answer ({reason}); check --host and that KFP is up") from err


def _client(host: str):
    check_host(host)
    import kfp

    return kfp.Client(host=host)


def submit_pipeline(pipeline: Pipeline, config: Config, host: str, experiment: str,
                    arguments: dict[str, str] | None = None) -> str:
    """Submit a run to a KFP installation (the dashboard shows it; `arguments`: its parameters besides
    `config`); returns the run id."""
    client = _client(host)
    package = compile_pipeline(pipeline, config, Path(config.paths.artifacts_dir) / "compiled")
    run = client.create_run_from_pipeline_package(
        str(package), arguments={"config": config_to_text(config), **(arguments or {})}, experiment_name=experiment
    )
    log.info("submitted %s pipeline to %s: run %s", pipeline.name, host, run.run_id)
    return run.run_id


def schedule_pipeline(pipeline: Pipeline, config: Config, host: str, experiment: str, cron: str) -> str:
    """Create a recurring run (KFP cron: 6 fields, seconds first) on a KFP installation; returns its id."""
    client = _client(host)
    package = compile_pipeline(pipeline, config, Path(config.paths.artifacts_dir) / "compiled")
    exp = client.create_experiment(experiment)
    job = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=f"{pipeline.name}-{int(time.time())}", cron_expression=cron,
        pipeline_package_path=str(package), params={"config": config_to_text(config)},
    )
    return job.recurring_run_id
