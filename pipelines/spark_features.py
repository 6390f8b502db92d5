"""The features step on Spark (features.engine=spark): the pipeline's `features` task submits a copy of the cluster's
SparkApplication template (k8s/overlays/spark, `recsys-features`) for this run, waits for the Spark Operator to
finish it and hands its examples and feature tables on as the task's outputs, as `features_op` does in process.

The run's canonical tables, config and outputs live in a folder of the shared volume that the driver and the
executors mount; the copy differs from the template only in its name, `suspend: false` and those paths.
"""

import time
from typing import Any

from kfp.dsl import Dataset, Input, Metrics, Output

from components.errors import RecsysError
from components.kfp_support import step

GROUP, VERSION, PLURAL = "sparkoperator.k8s.io", "v1beta2", "sparkapplications"
TEMPLATE = "recsys-features"  # k8s/overlays/spark/sparkapplication.yaml
NAMESPACE = "recsys"  # k8s/base/kustomization.yaml
RUNS_DIR = "/var/lib/recsys/artifacts/features/runs"  # on the shared volume (pipelines.training.SHARED_MOUNT)
DONE, FAILED = "COMPLETED", ("FAILED", "SUBMISSION_FAILED", "FAILING", "INVALIDATING")
RUN_ARGUMENTS = ("--config=", "--canonical=", "--examples=", "--tables=")  # replaced per run


class SparkRunError(RecsysError):
    """The Spark features run failed or did not finish in time; the message names the SparkApplication."""


def run_manifest(template: dict[str, Any], name: str, run_dir: str) -> dict[str, Any]:
    """The SparkApplication of one run: the template's spec with the run's name, not suspended, reading the run's
    config and canonical tables and writing its examples and tables under `run_dir`."""
    spec = {**template["spec"], "suspend": False}
    kept = [a for a in spec.get("arguments", []) if not a.startswith(RUN_ARGUMENTS)]
    spec["arguments"] = [f"--config={run_dir}/config.json", *kept, f"--canonical={run_dir}/canonical",
                         f"--examples={run_dir}/examples", f"--tables={run_dir}/tables"]
    metadata = template["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SparkApplication",
            "metadata": {"name": name, "namespace": metadata.get("namespace", NAMESPACE),
                         "labels": {**metadata.get("labels", {}), "recsys.io/template": TEMPLATE}},
            "spec": spec}


def application_state(app: dict[str, Any]) -> str | None:
    """The Spark Operator's state of an application (None before it reports one)."""
    return ((app.get("status") or {}).get("applicationState") or {}).get("state")


def submit_and_wait(api: Any, manifest: dict[str, Any], poll_s: float = 10.0, timeout_s: float = 6 * 3600.0) -> str:
    """Create `manifest` through `api` (a kubernetes CustomObjectsApi) and poll it until the operator reports it
    COMPLETED; a failed state or `timeout_s` raises SparkRunError naming its state and error message."""
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    deadline = time.monotonic() + timeout_s
    while True:
        app = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        state = application_state(app)
        if state == DONE:
            return state
        if state in FAILED:
            message = (app["status"].get("applicationState") or {}).get("errorMessage", "")
            raise SparkRunError(f"SparkApplication {namespace}/{name} ended {state}: {message}")
        if time.monotonic() > deadline:
            raise SparkRunError(f"SparkApplication {namespace}/{name} not finished after {timeout_s:.0f} s "
                                f"(state {state})")
        time.sleep(poll_s)


@step
def spark_features_op(config: str, canonical: Input[Dataset], examples: Output[Dataset],
                      feature_tables: Output[Dataset], metrics: Output[Metrics]):
    """KFP step `features` on Spark: the run's copy of the SparkApplication `recsys-features`, then its outputs."""
    import json
    import shutil
    import time
    import uuid
    from pathlib import Path

    import pyarrow.parquet as pq
    from kubernetes import client
    from kubernetes import config as kube_config

    from pipelines.spark_features import (
        GROUP,
        NAMESPACE,
        PLURAL,
        RUNS_DIR,
        TEMPLATE,
        VERSION,
        run_manifest,
        submit_and_wait,
    )

    name = f"{TEMPLATE}-{uuid.uuid4().hex[:10]}"
    run_dir = Path(RUNS_DIR) / name
    shutil.copytree(canonical.path, run_dir / "canonical")
    (run_dir / "config.json").write_text(config, encoding="utf-8")
    kube_config.load_incluster_config()
    api = client.CustomObjectsApi()
    template = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, TEMPLATE)
    started = time.perf_counter()
    submit_and_wait(api, run_manifest(template, name, str(run_dir)))
    shutil.copytree(run_dir / "examples", examples.path, dirs_exist_ok=True)
    shutil.copytree(run_dir / "tables", feature_tables.path, dirs_exist_ok=True)
    metrics.log_metric("spark_seconds", round(time.perf_counter() - started, 1))
    metrics.log_metric("examples", pq.ParquetFile(Path(examples.path) / "examples.parquet").metadata.num_rows)
    examples.metadata["file"] = "examples.parquet"
    examples.metadata["spark_application"] = name
    print(json.dumps({"spark_application": name, "run_dir": str(run_dir)}))
