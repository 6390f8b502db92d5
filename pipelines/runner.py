"""Compile, run locally (KFP SubprocessRunner), submit and schedule the project's pipelines."""

import logging
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from components.config import Config, absolute_paths, config_to_text
from components.errors import RecsysError

log = logging.getLogger(__name__)
PipelineName = Literal["training", "monitoring"]


class PipelineError(RecsysError):
    """A pipeline could not be compiled, run or submitted."""


def pipeline_function(name: PipelineName, config: Config) -> Callable:
    """The @dsl.pipeline function for `name` (imported lazily: compiling imports every component)."""
    gpu = config.model.fine_tune_encoder
    if name == "training":
        from pipelines.training import build_training_pipeline

        return build_training_pipeline(config.kfp, gpu, config.features.redis_password_env)
    if name == "monitoring":
        from pipelines.monitoring import build_monitoring_pipeline

        return build_monitoring_pipeline(config.kfp, gpu, config.features.redis_password_env)
    raise PipelineError(f"unknown pipeline '{name}' (choose training or monitoring)")


def compile_pipeline(name: PipelineName, config: Config, out_dir: str | Path) -> Path:
    """Write `<out_dir>/<name>_pipeline.yaml`, with the resolved config as the default `config` parameter."""
    from kfp import compiler

    out = Path(out_dir) / f"{name}_pipeline.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        pipeline_function(name, config), package_path=str(out), pipeline_parameters={"config": config_to_text(config)}
    )
    log.info("compiled %s pipeline to %s", name, out)
    return out


def _task_artifacts(run_dir: Path) -> dict[str, dict[str, str]]:
    artifacts: dict[str, dict[str, str]] = {}
    for task_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        outputs = {p.name: str(p) for p in sorted(task_dir.iterdir()) if p.name != "executor_output.json"}
        if outputs:
            artifacts[task_dir.name] = outputs
    return artifacts


def run_pipeline(name: PipelineName, config: Config) -> dict:
    """Run a pipeline end to end with the KFP local SubprocessRunner; return where each artifact landed."""
    from kfp import local

    config = absolute_paths(config)
    root = Path(config.paths.pipeline_root)
    root.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in root.iterdir()}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    started = time.monotonic()
    try:
        with warnings.catch_warnings():  # the local runner warns about settings only a cluster honours
            warnings.filterwarnings("ignore", message=".*(have no effect in the current local runner|base image).*")
            pipeline_function(name, config)(config=config_to_text(config))
    except RuntimeError as err:
        raise PipelineError(f"{name} pipeline failed: {err}") from err
    finally:
        new_runs = sorted((p for p in root.iterdir() if p.name not in before), key=lambda p: p.stat().st_mtime)
    run_dir = new_runs[-1] if new_runs else None
    result = {
        "pipeline": name,
        "run_dir": str(run_dir) if run_dir else None,
        "seconds": round(time.monotonic() - started, 1),
        "artifacts": _task_artifacts(run_dir) if run_dir else {},
    }
    log.info("%s pipeline finished in %.1f s; artifacts under %s", name, result["seconds"], run_dir)
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


def submit_pipeline(name: PipelineName, config: Config, host: str, experiment: str) -> str:
    """Submit a run to a KFP installation (the dashboard shows it); returns the run id."""
    client = _client(host)
    package = compile_pipeline(name, config, Path(config.paths.artifacts_dir) / "compiled")
    run = client.create_run_from_pipeline_package(
        str(package), arguments={"config": config_to_text(config)}, experiment_name=experiment
    )
    log.info("submitted %s pipeline to %s: run %s", name, host, run.run_id)
    return run.run_id


def schedule_pipeline(name: PipelineName, config: Config, host: str, experiment: str, cron: str) -> str:
    """Create a recurring run (KFP cron: 6 fields, seconds first) on a KFP installation; returns its id."""
    client = _client(host)
    package = compile_pipeline(name, config, Path(config.paths.artifacts_dir) / "compiled")
    exp = client.create_experiment(experiment)
    job = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=f"{name}-{int(time.time())}", cron_expression=cron,
        pipeline_package_path=str(package), params={"config": config_to_text(config)},
    )
    return job.recurring_run_id
