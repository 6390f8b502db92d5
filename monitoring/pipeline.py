"""The KFP v2 monitoring pipeline: collect -> reports + policy -> conditional retrain, and its three steps.

The retrain branch is the training pipeline itself (nested), so a new model still has to pass the
evaluation gate before it replaces the champion. The pipeline lives in the monitoring layer because its
steps run the monitoring code; the runner (pipelines.runner) compiles, runs or submits it as `MONITORING`.

Its inputs besides `config` say what to compare; each defaults to "" (the cluster's scheduled run):
- `reference`: a folder of canonical tables to monitor against (default: ingest the configured data);
- `reference_start/_end`, `baseline_start/_end`, `current_start/_end`: the windows (default: the windows of
  `monitoring.window_hours`, monitoring.data.resolve_windows);
- `now`: the policy's clock (default: the wall clock); `snapshot_at`: the Evidently snapshots' time (default:
  the current window's end).
"""

from collections.abc import Callable

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.config import Config, Kfp
from components.kfp_support import TaskImages, step
from components.request_log_pg import PASSWORD_ENV, PASSWORD_SECRET
from pipelines.runner import Pipeline
from pipelines.training import build_training_pipeline, mount_shared

NAME = "recsys-monitoring"
WINDOW_BOUNDS = ("reference_start", "reference_end", "baseline_start", "baseline_end", "current_start", "current_end")
MONITOR_INPUTS = ("reference", *WINDOW_BOUNDS, "now", "snapshot_at")  # the pipeline's parameters besides config


@step
def reference_op(config: str, reference: str, canonical: Output[Dataset], metrics: Output[Metrics]):
    """KFP: the reference tables: a copy of the canonical tables in folder `reference` when given, else the
    configured source ingested (as `ingest_op` does)."""
    import shutil
    from pathlib import Path

    from components.config import config_from_text
    from components.ingest import ingest
    from components.schemas import read_tables

    if reference:
        shutil.copytree(Path(reference), canonical.path)
        counts = {name: len(table) for name, table in read_tables(canonical.path).items()}
    else:
        counts = ingest(config_from_text(config), canonical.path)
    for table, rows in counts.items():
        metrics.log_metric(f"rows_{table}", rows)


@step
def monitor_op(
    config: str,
    canonical: Input[Dataset],
    reports: Output[HTML],
    summary: Output[Artifact],
    metrics: Output[Metrics],
    reference_start: str = "",
    reference_end: str = "",
    baseline_start: str = "",
    baseline_end: str = "",
    current_start: str = "",
    current_end: str = "",
    now: str = "",
    snapshot_at: str = "",
) -> bool:
    """KFP: monitoring reports over `serving.request_log` against the canonical tables; returns retrain?.

    Window bounds, `now` (the policy's clock) and `snapshot_at` are timestamps; "" keeps the default.
    `summary` is a folder: summary.json, decision.json, index.html and the Evidently drift pages;
    `reports` is the overview page. When True is returned the retrain lock is held by the decision in
    summary.metadata["decision_id"]: end it with `retrain_done_op` (or it expires)."""
    import json
    import shutil
    from pathlib import Path

    from components.config import config_from_text
    from monitoring.trigger import monitor_and_decide

    cfg = config_from_text(config)
    out = Path(summary.path)
    bounds = {"reference_start": reference_start, "reference_end": reference_end, "baseline_start": baseline_start,
              "baseline_end": baseline_end, "current_start": current_start, "current_end": current_end}
    result, decision = monitor_and_decide(cfg, canonical.path, cfg.serving.request_log, out, now=now or None,
                                          snapshot_at=snapshot_at or None, **{k: v for k, v in bounds.items() if v})
    shutil.copyfile(out / "index.html", reports.path)
    summary.metadata["decision_id"] = decision.decision_id
    summary.metadata["retrain"] = decision.retrain
    summary.metadata["reason"] = decision.reason
    for name, value in result["signals"].items():
        if value is not None:
            metrics.log_metric(name, float(value))
    metrics.log_metric("retrain", float(decision.retrain))
    print(json.dumps({"decision": decision.reason, "signals": result["signals"]}, default=str))
    return bool(decision.retrain)


@step
def retrain_done_op(config: str, summary: Input[Artifact], status: str = "succeeded") -> str:
    """KFP: release the retrain lock taken by monitor_op once the retraining branch has finished."""
    from components.config import config_from_text
    from monitoring.policy import release_retrain

    decision_id = str(summary.metadata["decision_id"])
    release_retrain(config_from_text(config), decision_id, {"status": status, "mode": "pipeline"})
    return decision_id


def reads_request_log(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """A step that reads the request log: on a cluster its PostgreSQL password comes from the Secret (optional,
    so an SQLite log needs none)."""
    kubernetes.use_secret_as_env(task, secret_name=PASSWORD_SECRET, secret_key_to_env={"password": PASSWORD_ENV},
                                 optional=True)
    return task


def build_monitoring_pipeline(kfp: Kfp, gpu: bool, redis_password_env: str, spark: bool = False) -> Callable:
    """The monitoring pipeline in the images of `kfp`; `gpu`, `redis_password_env` and `spark` (the features step
    as a SparkApplication) are passed on to the nested training pipeline."""
    training_pipeline = build_training_pipeline(kfp, gpu, redis_password_env, spark)
    images = TaskImages(kfp)

    @dsl.pipeline(
        name=NAME,
        description="Evidently drift, quality and fairness reports over the request log; retrains through "
        "the training pipeline when the retraining policy fires.",
    )
    def monitoring_pipeline(config: str, reference: str = "", reference_start: str = "", reference_end: str = "",
                            baseline_start: str = "", baseline_end: str = "", current_start: str = "",
                            current_end: str = "", now: str = "", snapshot_at: str = "") -> None:
        """`config` is the resolved project configuration (one line of JSON); the rest: see the module."""
        collect = mount_shared(images.task(reference_op, config=config, reference=reference))
        collect.set_caching_options(False).set_display_name("collect reference")
        monitor = reads_request_log(mount_shared(images.task(
            monitor_op, config=config, canonical=collect.outputs["canonical"], reference_start=reference_start,
            reference_end=reference_end, baseline_start=baseline_start, baseline_end=baseline_end,
            current_start=current_start, current_end=current_end, now=now, snapshot_at=snapshot_at)))
        monitor.set_caching_options(False).set_display_name("reports + policy")
        with dsl.If(monitor.outputs["Output"] == True, name="retrain"):  # noqa: E712 (a KFP condition)
            retrain = training_pipeline(config=config).set_display_name("training pipeline")
            done = images.task(retrain_done_op, config=config, summary=monitor.outputs["summary"]).after(retrain)
            done.set_display_name("release retrain lock")

    return monitoring_pipeline


def monitoring_pipeline_for(config: Config) -> Callable:
    """The monitoring pipeline of a resolved config."""
    return build_monitoring_pipeline(config.kfp, config.model.fine_tune_encoder, config.features.redis_password_env,
                                     config.features.engine == "spark")


MONITORING = Pipeline("monitoring", monitoring_pipeline_for)
