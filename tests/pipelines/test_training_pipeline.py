"""The training pipeline: compiles to YAML that loads back; runs end to end with the KFP local runner."""

from pathlib import Path

import pytest
import yaml
from kfp.components import load_component_from_file

from components.config import load_config
from pipelines.runner import PipelineError, check_host, compile_pipeline, run_pipeline
from tests.conftest import small_tables, write_csvs


def test_compiled_yaml_loads_back_with_the_config_as_default(tmp_path):
    config = load_config(overrides=["train.epochs=2"])
    path = compile_pipeline("training", config, tmp_path)
    component = load_component_from_file(str(path))
    assert component.name == "recsys-training"
    spec = yaml.safe_load(path.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert {"ingest-op", "validate-op"} <= set(tasks)
    default = spec["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    assert yaml.safe_load(default)["train"]["epochs"] == 2
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images <= {config.kfp.image, config.kfp.gpu_image}


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
