"""The KFP v2 monitoring pipeline: collect -> reports -> conditional retrain.

The retrain branch is the training pipeline itself (nested), so a new model still has to pass the
evaluation gate before it replaces the champion.
"""

from collections.abc import Callable

from kfp import dsl, kubernetes

from components.config import Kfp
from components.ingest import ingest_op
from components.kfp_support import TaskImages
from components.monitor import monitor_op, retrain_done_op
from components.request_log_pg import PASSWORD_ENV, PASSWORD_SECRET
from pipelines.training import build_training_pipeline, mount_shared

NAME = "recsys-monitoring"


def reads_request_log(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """A step that reads the request log: on a cluster its PostgreSQL password comes from the Secret (optional,
    so an SQLite log needs none)."""
    kubernetes.use_secret_as_env(task, secret_name=PASSWORD_SECRET, secret_key_to_env={"password": PASSWORD_ENV},
                                 optional=True)
    return task


def build_monitoring_pipeline(kfp: Kfp, gpu: bool, redis_password_env: str) -> Callable:
    """The monitoring pipeline in the images of `kfp`; `gpu` and `redis_password_env` are passed on to the nested
    training pipeline."""
    training_pipeline = build_training_pipeline(kfp, gpu, redis_password_env)
    images = TaskImages(kfp)

    @dsl.pipeline(
        name=NAME,
        description="Evidently drift, quality and fairness reports over the request log; retrains through "
        "the training pipeline when the retraining policy fires.",
    )
    def monitoring_pipeline(config: str) -> None:
        """`config` is the resolved project configuration (one line of JSON)."""
        collect = mount_shared(images.task(ingest_op, config=config))
        collect.set_caching_options(False).set_display_name("collect reference")
        monitor = reads_request_log(mount_shared(images.task(monitor_op, config=config,
                                                               canonical=collect.outputs["canonical"])))
        monitor.set_caching_options(False).set_display_name("reports + policy")
        with dsl.If(monitor.outputs["Output"] == True, name="retrain"):  # noqa: E712 (a KFP condition)
            retrain = training_pipeline(config=config).set_display_name("training pipeline")
            done = images.task(retrain_done_op, config=config, summary=monitor.outputs["summary"]).after(retrain)
            done.set_display_name("release retrain lock")

    return monitoring_pipeline
