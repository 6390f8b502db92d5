"""The Feast repository: self-contained definitions, `feast apply` in the folder, the production variant."""

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2] / "feature_repo"
ALLOWED_IMPORTS = {"datetime", "json", "os", "pathlib", "feast", "pyarrow"}


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"defs_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_definitions_import_nothing_of_the_project():
    tree = ast.parse((REPO / "definitions.py").read_text())
    nodes = list(ast.walk(tree))
    roots = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom)}
    assert roots <= ALLOWED_IMPORTS, roots - ALLOWED_IMPORTS


def test_objects_and_services():
    defs = load(REPO / "definitions.py")
    user_fields = (("age", "int64"), ("age_band", "string"), ("gender", "string"), ("occupation", "string"))
    item_fields = (("brand", "string"), ("tags", "string_list"), ("price", "float64"))
    objects = {o.name: o for o in defs.build_definitions("/somewhere", (2, 14), user_fields, item_fields)}
    assert {"user", "item", "user_profile", "user_activity", "item_metadata", "item_popularity", "training",
            "serving", "user_activity_push"} <= set(objects)
    assert [f.name for f in objects["item_popularity"].features] == ["item_popularity_2d", "item_popularity_14d"]
    assert objects["user_activity"].stream_source.name == "user_activity_push"
    assert objects["user_activity"].batch_source.path == "/somewhere/user_activity.parquet"
    served = {p.name: [f.name for f in p.features] for p in objects["serving"].feature_view_projections}
    assert served["user_profile"] == ["age", "age_band", "gender", "occupation"]
    assert {"recent_item_ids", "user_rated_count"} <= set(served["user_activity"])  # push_interaction reads these
    assert [(f.name, str(f.dtype)) for f in objects["item_metadata"].features] == [
        ("title", "String"), ("text", "String"), ("brand", "String"), ("tags", "Array(String)"),
        ("price", "Float64")]
    trained = {p.name for p in objects["training"].feature_view_projections}
    assert trained == {"user_profile", "user_activity", "item_popularity"}


def test_windows_follow_the_data(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    (repo / "data").mkdir()
    pd.DataFrame({"item_id": [1], "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC"),
                  "item_popularity_3d": [1], "item_popularity_90d": [1]}).to_parquet(
        repo / "data" / "item_popularity.parquet")
    defs = load(repo / "definitions.py")
    assert [f.name for f in defs.item_popularity.features] == ["item_popularity_3d", "item_popularity_90d"]


def test_declared_fields_come_from_the_named_file(tmp_path, monkeypatch):
    """A feature server without the tables (the cluster's) reads the declared fields from $RECSYS_FEATURE_FIELDS."""
    manifest = {"popularity_windows": [5], "user_fields": [["segment", "string"]],
                "item_fields": [["price", "float64"], ["tags", "string_list"]]}
    path = tmp_path / "fields.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    monkeypatch.setenv("RECSYS_FEATURE_FIELDS", str(path))
    defs = load(REPO / "definitions.py")
    assert [f.name for f in defs.user_profile.features] == ["segment"]
    assert [(f.name, str(f.dtype)) for f in defs.item_metadata.features][2:] == [
        ("price", "Float64"), ("tags", "Array(String)")]
    assert [f.name for f in defs.item_popularity.features] == ["item_popularity_5d"]


def test_cluster_feature_fields_match_the_default_declaration(tmp_path):
    """k8s/base/feature_fields.json is what the features step writes for the default (MovieLens) declaration."""
    from components.config import load_config
    from components.features import write_feature_tables
    from components.ingest import ingest
    from tests.conftest import movielens_shaped_source

    source = movielens_shaped_source(tmp_path / "source")
    config = load_config(source.config_path, overrides=[f"features.data_dir={tmp_path / 'features'}"])
    ingest(config, tmp_path / "canonical")
    write_feature_tables(config, tmp_path / "canonical")
    written = json.loads((tmp_path / "features" / "feature_fields.json").read_text(encoding="utf-8"))
    committed = json.loads((REPO.parent / "k8s" / "base" / "feature_fields.json").read_text(encoding="utf-8"))
    assert written == committed


@pytest.mark.integration
def test_feast_apply_in_a_clean_copy(tmp_path):
    repo = tmp_path / "feature_repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    feast = Path(sys.executable).with_name("feast")
    done = subprocess.run([str(feast), "apply"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("feature service training", "feature service serving", "feature view user_activity"):
        assert f"Created {name}" in done.stdout
    assert (repo / "data" / "registry.db").is_file() and (repo / "data" / "online_store.db").is_file()


def test_production_variant_uses_redis():
    prod = yaml.safe_load((REPO / "feature_store.production.yaml").read_text())
    default = yaml.safe_load((REPO / "feature_store.yaml").read_text())
    assert prod["project"] == default["project"] == "recsys"
    assert prod["online_store"]["type"] == "redis"
    address, *params = prod["online_store"]["connection_string"].split(",")
    assert address == "${REDIS_ADDRESS}" and 'password="${RECSYS_REDIS_PASSWORD}"' in params  # values from the env
    assert prod["offline_store"]["type"] not in ("file", "duckdb")
    assert default["online_store"]["type"] == "sqlite" and default["offline_store"]["type"] == "duckdb"


@pytest.mark.integration
def test_feast_apply_registers_each_data_sets_attributes(source_dataset, tmp_path):
    """`feast apply` inside the repository, with the feature tables of a data set in ./data: its declared
    attributes become the profile and metadata features."""
    from components.config import load_config
    from components.feature_tables import duckdb_feature_tables
    from components.ingest import ingest
    config = load_config(source_dataset.config_path)
    ingest(config, tmp_path / "canonical")
    repo = tmp_path / "feature_repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    duckdb_feature_tables(tmp_path / "canonical", repo / "data", config.dataset, 5, (7,))
    feast = Path(sys.executable).with_name("feast")
    done = subprocess.run([str(feast), "apply"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = subprocess.run([str(feast), "feature-views", "describe", "user_profile"], cwd=repo,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in config.dataset.user_attributes:
        assert f"name: {name}" in listed.stdout, listed.stdout[:2000]
