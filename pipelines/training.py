"""The KFP v2 training pipeline.

ingest -> validate -> features -> train -> evaluate -> [gate] -> compress -> deploy -> promote

The gate is a KFP condition on evaluate's output: a candidate that does not beat the champion is
neither compressed nor deployed. Cluster-only settings (GPU request, node selector, toleration) are
compiled in. No task has a KFP retry policy (it would re-run a data or configuration error too): the steps
that talk to servers retry transient failures themselves (`components.errors.retry_transient`).
The deploy step's component is defined here: it drives Triton through `serving.deploy`, a layer above components/.
"""

from collections.abc import Callable

from kfp import dsl, kubernetes
from kfp.dsl import Artifact, Input, Metrics, Output

from components.compress import compress_op
from components.config import Config, Kfp
from components.evaluate import evaluate_op
from components.features import REDIS_PASSWORD_SECRET, features_op
from components.ingest import ingest_op
from components.kfp_support import TaskImages, step
from components.promote import promote_op
from components.train import train_op
from components.validate import validate_op
from pipelines.runner import Pipeline
from pipelines.spark_features import spark_features_op
from serving.triton_admin import ADMIN_KEY_ENV, ADMIN_KEY_SECRET

NAME = "recsys-training"
GPU_RESOURCE = "nvidia.com/gpu"
SHARED_PVC = "recsys-artifacts"  # k8s/base/storage.yaml; k8s/base/recsys-config.yaml points every path under it
SHARED_MOUNT = "/var/lib/recsys"


@step
def deploy_op(config: str, bundle: Input[Artifact], deployment: Output[Artifact], metrics: Output[Metrics]):
    """Deploy the serving bundle to Triton (starting a local server if none runs) and record the result."""
    import json
    from pathlib import Path

    from components.config import config_from_text
    from components.errors import retry_transient
    from serving.deploy import deploy_bundle, ensure_server

    cfg = config_from_text(config)
    started = retry_transient(lambda: ensure_server(cfg), what="starting Triton")
    result = retry_transient(lambda: deploy_bundle(cfg, bundle.path), what="deploy")
    Path(deployment.path).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    deployment.metadata.update({"version": result.version, "grpc_url": result.grpc_url, "server_started": started})
    metrics.log_metric("deployed_version", result.version)
    metrics.log_metric("deploy_seconds", round(result.duration_s, 3))
    metrics.log_metric("smoke_requests", len(result.smoke))


def mount_shared(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Steps that read or write state outside their artifacts (id maps, Feast store, registry, Triton
    repository)."""
    kubernetes.mount_pvc(task, pvc_name=SHARED_PVC, mount_path=SHARED_MOUNT)
    return task


def secret_env(task: dsl.PipelineTask, secret: str, key: str, env: str) -> dsl.PipelineTask:
    """On a cluster the step gets a Secret's value as an environment variable: the compiled pipeline names the
    Secret, never holds the value."""
    kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={key: env})
    return task


def request_gpu(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Ask the cluster for one GPU node for the fine-tuning step (kfp-kubernetes)."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    task.set_cpu_request("4").set_memory_request("16G")
    kubernetes.add_node_selector(task, label_key="nvidia.com/gpu.present", label_value="true")
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    return task


def build_training_pipeline(kfp: Kfp, gpu: bool, redis_password_env: str, spark: bool = False) -> Callable:
    """The training pipeline in the images of `kfp`; `gpu` (config model.needs_gpu) puts the train
    step on a GPU node; the features step gets Redis's password as `redis_password_env` (config
    features.redis_password_env), the deploy step Triton's admin key as RECSYS_TRITON_ADMIN_KEY. `spark`
    (config features.engine=spark): the features step runs as a SparkApplication (k8s/overlays/spark), whose
    driver gets Redis's password itself."""
    images = TaskImages(kfp)

    @dsl.pipeline(
        name=NAME,
        description="Validate interactions, build Feast features, fine-tune and evaluate a two-tower "
        "recommender, compress it and deploy it to Triton when it beats the champion.",
    )
    def training_pipeline(config: str) -> None:
        """`config` is the resolved project configuration (one line of JSON)."""
        ingest = mount_shared(images.task(ingest_op, config=config))  # reads the committed id maps
        ingest.set_caching_options(False).set_display_name("ingest")
        validate = mount_shared(images.task(validate_op, config=config, canonical=ingest.outputs["canonical"]))
        validate.set_display_name("validate")
        validated = validate.outputs["validated"]
        if spark:
            features = mount_shared(images.task(spark_features_op, config=config, canonical=validated))
        else:
            features = mount_shared(images.task(features_op, config=config, canonical=validated))
            secret_env(features, REDIS_PASSWORD_SECRET, "password", redis_password_env)
        features.set_display_name("features")  # transient failures are retried inside the step, never bad data
        train = images.task(train_op, config=config, canonical=validated, examples=features.outputs["examples"])
        train.set_display_name("train")
        if gpu:
            request_gpu(train)
        model = train.outputs["model"]
        evaluate = mount_shared(images.task(evaluate_op, config=config, canonical=validated, model=model))
        evaluate.set_display_name("evaluate")
        with dsl.If(evaluate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
            compress = images.task(compress_op, config=config, canonical=validated, model=model)
            compress.set_display_name("compress")
            deploy = mount_shared(images.task(deploy_op, config=config, bundle=compress.outputs["bundle"]))
            secret_env(deploy, ADMIN_KEY_SECRET, "key", ADMIN_KEY_ENV)
            deploy.set_display_name("deploy").set_caching_options(False)
            promote = images.task(promote_op, config=config, model=model, decision=evaluate.outputs["decision"],
                                 deployment=deploy.outputs["deployment"])
            mount_shared(promote).set_display_name("promote champion").set_caching_options(False)

    return training_pipeline


def training_pipeline_for(config: Config) -> Callable:
    """The training pipeline of a resolved config (the train step on a GPU node when the full fine-tune tunes a
    transformer: `model.needs_gpu`; the features step on Spark when features.engine=spark)."""
    return build_training_pipeline(config.kfp, config.model.needs_gpu, config.features.redis_password_env,
                                   config.features.engine == "spark")


TRAINING = Pipeline("training", training_pipeline_for)
