"""The training pipeline: compiles to YAML that loads back; runs end to end with the KFP local runner."""

from pathlib import Path

import pytest
import yaml
from kfp.components import load_component_from_file

from components.config import load_config
from pipelines.runner import PipelineError, check_host, compile_pipeline, run_pipeline
from tests.conftest import small_tables, write_csvs

STEPS = {
    "training": {"ingest-op", "validate-op", "features-op", "train-op", "evaluate-op", "compress-op", "deploy-op",
                 "promote-op"},
    "monitoring": {"ingest-op", "monitor-op", "retrain-done-op"} | {"ingest-op", "train-op", "deploy-op"},
}


@pytest.mark.parametrize("name", ["training", "monitoring"])
def test_compiled_yaml_loads_back_and_names_every_component(tmp_path, name):
    config = load_config(overrides=["train.epochs=2"])
    path = compile_pipeline(name, config, tmp_path)
    component = load_component_from_file(str(path))
    assert component.name == f"recsys-{name}"
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    assert {f"comp-{step}" for step in STEPS[name]} <= set(spec["components"])
    default = spec["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    assert yaml.safe_load(default)["train"]["epochs"] == 2
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {config.kfp.image, config.kfp.gpu_image}


def test_gate_is_a_condition_and_gpu_is_requested_only_when_fine_tuning(tmp_path):
    cpu = list(yaml.safe_load_all(compile_pipeline("training", load_config(), tmp_path / "cpu").read_text()))
    gate = cpu[0]["root"]["dag"]["tasks"]["condition-1"]
    assert "evaluate-op" in gate["triggerPolicy"]["condition"]
    assert "nvidia.com/gpu" not in str(cpu)
    gpu = compile_pipeline("training", load_config(overrides=["model.fine_tune_encoder=true"]), tmp_path / "gpu")
    spec, platform = yaml.safe_load_all(gpu.read_text())
    train = next(e for n, e in spec["deploymentSpec"]["executors"].items() if "train" in n)
    assert train["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert "nodeSelector" in str(platform) and "recsys-artifacts" in str(platform)


def test_unreachable_host_fails_fast():
    import time

    started = time.monotonic()
    with pytest.raises(PipelineError, match="does not answer"):
        check_host("http://127.0.0.1:1")
    assert time.monotonic() - started < 1.0


def _files_config(tmp_path, tables):
    paths = write_csvs(tables, tmp_path / "in")
    return load_config(overrides=[
        f"paths.pipeline_root={tmp_path / 'kfp'}", "data.source=files",
        f"data.interactions_path={paths['interactions']}", f"data.users_path={paths['users']}",
        f"data.items_path={paths['items']}",
    ])


@pytest.mark.integration
def test_local_run_on_movielens_lands_every_artifact(tmp_path):
    config = load_config(overrides=[f"paths.pipeline_root={tmp_path / 'kfp'}"])
    result = run_pipeline("training", config)
    validated = result["artifacts"]["validate-op"]["validated"]
    assert sorted(p.name for p in Path(validated).iterdir()) == ["interactions.parquet", "items.parquet",
                                                                 "users.parquet"]
    assert (Path(result["artifacts"]["validate-op"]["data_docs"]) / "index.html").exists()


@pytest.mark.integration
def test_local_run_stops_at_the_gate_on_bad_data(tmp_path):
    tables = small_tables()
    tables["interactions"].loc[0, "rating"] = 11.0
    with pytest.raises(PipelineError, match="validate-op"):
        run_pipeline("training", _files_config(tmp_path, tables))
    runs = list((tmp_path / "kfp").iterdir())
    assert len(runs) == 1
    assert not (runs[0] / "validate-op" / "validated").exists()
    assert {p.name for p in runs[0].iterdir()} == {"ingest-op", "validate-op"}  # no downstream task ran
