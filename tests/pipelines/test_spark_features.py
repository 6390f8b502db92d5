"""The features step on Spark: the compiled pipeline selects it by features.engine, each run's SparkApplication is a
valid copy of the overlay's template, and the step waits for the Spark Operator's verdict."""

import pytest
import yaml

from components.config import load_config
from pipelines.runner import compile_pipeline
from pipelines.spark_features import SparkRunError, run_manifest, submit_and_wait
from pipelines.training import SHARED_MOUNT, SHARED_PVC, TRAINING
from tests.conftest import KUBECTL_MISSING


def _compiled(tmp_path, *overrides: str) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(compile_pipeline(TRAINING, load_config(overrides=list(overrides)),
                                                         tmp_path).read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_features_engine_selects_the_spark_step_in_the_compiled_pipeline(tmp_path):
    spec, executors = _compiled(tmp_path / "spark", "features.engine=spark")
    tasks = spec["root"]["dag"]["tasks"]
    assert "spark-features-op" in tasks and "features-op" not in tasks
    examples = tasks["train-op"]["inputs"]["artifacts"]["examples"]["taskOutputArtifact"]
    assert examples == {"outputArtifactKey": "examples", "producerTask": "spark-features-op"}
    step = executors["exec-spark-features-op"]
    assert [(m["constant"], m["mountPath"]) for m in step["pvcMount"]] == [(SHARED_PVC, SHARED_MOUNT)]
    assert "secretAsEnv" not in step  # the Spark driver reads Redis's password from its own Secret reference
    default = _compiled(tmp_path / "duckdb")[0]["root"]["dag"]["tasks"]
    assert "features-op" in default and "spark-features-op" not in default


@pytest.mark.parametrize(("engine", "step"), [("spark", "spark-features-op"), ("duckdb", "features-op")])
def test_the_retraining_pipeline_uses_the_configured_features_engine(tmp_path, engine, step):
    from monitoring.pipeline import MONITORING

    spec = next(yaml.safe_load_all(compile_pipeline(MONITORING, load_config(overrides=[f"features.engine={engine}"]),
                                                    tmp_path).read_text()))
    nested = spec["components"]["comp-recsys-training"]["dag"]["tasks"]
    other = ({"spark-features-op", "features-op"} - {step}).pop()
    assert step in nested and other not in nested


@KUBECTL_MISSING
def test_each_run_is_a_valid_copy_of_the_overlays_template():
    from tests.k8s import policies as P

    template = next(o for o in P.render("overlays/spark") if o["kind"] == "SparkApplication")
    run_dir = f"{SHARED_MOUNT}/artifacts/features/runs/recsys-features-0123456789"
    run = run_manifest(template, "recsys-features-0123456789", run_dir)
    assert P.validate_object(run) == []
    assert run["metadata"]["name"] == "recsys-features-0123456789" and run["spec"]["suspend"] is False
    assert run["metadata"]["namespace"] == template["metadata"]["namespace"]
    args = run["spec"]["arguments"]
    assert args[0] == f"--config={run_dir}/config.json"
    assert args[-3:] == [f"--canonical={run_dir}/canonical", f"--examples={run_dir}/examples",
                         f"--tables={run_dir}/tables"]
    assert "--set=features.engine=spark" in args and len(args) == len(template["spec"]["arguments"])
    unchanged = {k: v for k, v in template["spec"].items() if k not in ("suspend", "arguments")}
    assert {k: v for k, v in run["spec"].items() if k not in ("suspend", "arguments")} == unchanged


class OperatorStates:
    """The Spark Operator's side of the CustomObjectsApi calls: each poll reports the next state."""

    def __init__(self, *states: str | None, error: str = "") -> None:
        self.states, self.error, self.created = list(states), error, []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body["metadata"]["name"]))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"status": {"applicationState": {"state": state, "errorMessage": self.error}}} if state else {}


MANIFEST = {"metadata": {"name": "recsys-features-x", "namespace": "recsys"}, "spec": {}}


def test_the_step_waits_for_completion_and_reports_failures():
    api = OperatorStates(None, "SUBMITTED", "RUNNING", "COMPLETED")
    assert submit_and_wait(api, MANIFEST, poll_s=0) == "COMPLETED" and api.states == ["COMPLETED"]
    assert api.created == [("sparkoperator.k8s.io", "v1beta2", "recsys", "sparkapplications", "recsys-features-x")]
    with pytest.raises(SparkRunError, match="recsys/recsys-features-x ended FAILED: driver OOMKilled"):
        submit_and_wait(OperatorStates("RUNNING", "FAILED", error="driver OOMKilled"), MANIFEST, poll_s=0)
    with pytest.raises(SparkRunError, match="not finished after 0 s .state RUNNING"):
        submit_and_wait(OperatorStates("RUNNING"), MANIFEST, poll_s=0, timeout_s=0)
