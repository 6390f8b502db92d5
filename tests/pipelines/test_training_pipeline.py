"""The training pipeline: compiles to YAML that loads back; runs end to end with the KFP local runner."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kfp.components import load_component_from_file

from components.config import absolute_paths, config_to_text, load_config
from components.ingest import ingest_op
from components.validate import validate_op
from pipelines.runner import PipelineError, check_host, compile_pipeline, run_pipeline
from pipelines.training import TRAINING
from recsys.pipeline import pipeline_named
from tests.conftest import small_tables, write_csvs

STEPS = {
    "training": {"ingest-op", "validate-op", "features-op", "train-op", "evaluate-op", "compress-op", "deploy-op",
                 "promote-op"},
    "monitoring": {"ingest-op", "monitor-op", "retrain-done-op"} | {"ingest-op", "train-op", "deploy-op"},
}


@pytest.mark.parametrize("name", ["training", "monitoring"])
def test_compiled_yaml_loads_back_and_names_every_component(tmp_path, name):
    config = load_config(overrides=["train.epochs=2"])
    path = compile_pipeline(pipeline_named(name), config, tmp_path)
    component = load_component_from_file(str(path))
    assert component.name == f"recsys-{name}"
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    assert {f"comp-{step}" for step in STEPS[name]} <= set(spec["components"])
    default = spec["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    assert yaml.safe_load(default)["train"]["epochs"] == 2
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {config.kfp.image, config.kfp.gpu_image}
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    retried = [name for dag in dags for name, task in dag["tasks"].items() if "retryPolicy" in task]
    assert retried == []  # KFP would retry bad data too; steps retry transient errors


def test_gate_is_a_condition_and_gpu_is_requested_only_when_fine_tuning_a_transformer(tmp_path):
    cpu = list(yaml.safe_load_all(compile_pipeline(TRAINING, load_config(), tmp_path / "cpu").read_text()))
    gate = cpu[0]["root"]["dag"]["tasks"]["condition-1"]
    assert "evaluate-op" in gate["triggerPolicy"]["condition"]
    assert [n for n, e in cpu[0]["deploymentSpec"]["executors"].items()
            if "accelerator" in e["container"].get("resources", {})] == []
    cpu_platform = cpu[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert [n for n, e in cpu_platform.items() if "nodeSelector" in e or "tolerations" in e] == []
    table = compile_pipeline(TRAINING, load_config(overrides=["model.fine_tune_encoder=true"]), tmp_path / "table")
    assert "accelerator" not in table.read_text() and "nvidia.com/gpu" not in table.read_text()  # a CPU job:
    # the full fine-tune of the default token table
    gpu = compile_pipeline(TRAINING, load_config(overrides=["model.fine_tune_encoder=true",
                                                            "model.text_encoder=all-MiniLM-L6-v2"]), tmp_path / "gpu")
    spec, platform = yaml.safe_load_all(gpu.read_text())
    accelerated = {n: e["container"]["resources"]["accelerator"]["resourceCount"]
                   for n, e in spec["deploymentSpec"]["executors"].items()
                   if "accelerator" in e["container"].get("resources", {})}
    assert accelerated == {"exec-train-op": "1"}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train-op"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert [t["key"] for t in executors["exec-train-op"]["tolerations"]] == ["nvidia.com/gpu"]
    assert {m["constant"] for e in executors.values() for m in e.get("pvcMount", [])} == {"recsys-artifacts"}


def test_unreachable_host_fails_fast():
    import time

    started = time.monotonic()
    with pytest.raises(PipelineError, match="does not answer"):
        check_host("http://127.0.0.1:1")
    assert time.monotonic() - started < 1.0


def _files_config(tmp_path, tables, *extra: str):
    paths = write_csvs(tables, tmp_path / "in")
    return load_config(overrides=[
        f"paths.pipeline_root={tmp_path / 'kfp'}", f"paths.artifacts_dir={tmp_path / 'artifacts'}",
        f"paths.data_dir={tmp_path / 'data'}", f"features.data_dir={tmp_path / 'features'}", "data.source=files",
        f"data.interactions_path={paths['interactions']}", f"data.users_path={paths['users']}",
        f"data.items_path={paths['items']}", *extra,
    ])


@pytest.mark.integration
def test_ingest_and_validate_of_movielens_in_the_local_runner(tmp_path):
    """The pipeline spine on the real MovieLens-100K, through the KFP local runner."""
    from kfp import dsl, local

    @dsl.pipeline(name="spine")
    def spine(config: str) -> None:
        validate_op(config=config, canonical=ingest_op(config=config).outputs["canonical"])

    config = load_config(overrides=[f"paths.pipeline_root={tmp_path / 'kfp'}"])
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    spine(config=config_to_text(absolute_paths(config)))
    run_dir = next((tmp_path / "kfp").iterdir())
    validated = run_dir / "validate-op" / "validated"
    assert len(pd.read_parquet(validated / "interactions.parquet")) == 100_000
    summary = json.loads((run_dir / "validate-op" / "data_docs" / "summary.json").read_text())
    assert summary["success"] and summary["statistics"]["rows"]["users"] == 943
    assert (run_dir / "validate-op" / "data_docs" / "index.html").exists()


def check_run_overview(result: dict, steps: set[str]) -> None:
    """The run's overview page names every step with its status and duration, its links resolve to files of
    the run, it renders in headless Chromium without an error, and the run's full log is beside it."""
    import re

    from benchmarks.browser import check_page

    run_dir, overview = Path(result["run_dir"]), Path(result["overview"])
    assert overview == run_dir / "index.html"
    text = overview.read_text()
    ran = [s for s in result["steps"] if s.status == "SUCCESS"]
    assert {s.task for s in ran} == steps
    for step in ran:
        assert step.seconds is not None and step.seconds > 0 and step.figure, step
        assert f"<b>{step.label}</b><small>success {step.seconds:.1f} s</small>" in text
    hrefs = re.findall(r'<a href="([^"]+)"', text)
    assert {"validate-op/data_docs/index.html", "reports/train-op.curve.html", "reports/evaluate-op.report.html",
            "reports/compress-op.report.html", "deploy-op/deployment", "pipeline.log"} <= set(hrefs)
    assert [h for h in hrefs if not (run_dir / h).exists()] == []
    log = (run_dir / "pipeline.log").read_text()
    assert "KFP Executor" in log and "Executing task" in log
    check = check_page(overview, run_dir.parent / "overview.png")
    assert check.errors == [] and check.text_length > 500 and check.title.startswith("Run overview")
    report = check_page(run_dir / "reports" / "evaluate-op.report.html", run_dir.parent / "evaluation.png")
    assert report.errors == [] and report.text_length > 500  # rendered as HTML, not shown as source text


@pytest.mark.integration
def test_full_pipeline_on_a_tiny_configuration(tmp_path, capfd):
    """ingest -> validate -> features -> train -> evaluate -> gate -> compress -> deploy -> promote, all real."""
    from components.processes import free_port
    from components.registry import read_champion
    from serving.triton_client import RecommenderClient
    from serving.triton_server import settings_from_config, stop_detached
    from tests.conftest import SEQ, planted_tables

    tiny = {
        "model.embedding_dim": 16, "model.max_seq_len": SEQ, "model.user_layers": 1, "model.dropout": 0.0,
        "train.epochs": 3, "train.batch_size": 32, "train.learning_rate": 0.01, "train.max_minutes": 2,
        "evaluate.cold_start_items": 0, "evaluate.bootstrap_samples": 10, "evaluate.gate_min_improvement": -1.0,
        "evaluate.knn_neighbours": [10], "evaluate.ease_lambdas": [100],
        "evaluate.sasrec.max_seq_len": SEQ, "evaluate.sasrec.embedding_dim": 16, "evaluate.sasrec.blocks": 1,
        "evaluate.sasrec.epochs": 3, "evaluate.als.factors": [8], "evaluate.als.regularization": [0.1],
        "evaluate.als.iterations": [5], "evaluate.als.alpha": [1.0],
        "compress.variants": ["fp32", "int8"], "compress.latency_repeats": 2,
        "serving.triton_grpc_port": free_port(), "serving.triton_http_port": free_port(),
        "serving.triton_metrics_port": free_port(), "serving.model_repository": tmp_path / "models",
        "serving.triton_build_dir": tmp_path / "triton", "serving.triton_log_file": tmp_path / "triton" / "log",
    }
    tables = planted_tables()
    tables["items"]["genres"] = tables["items"]["title"].str.split().str[0]  # the template's declared field
    config = _files_config(tmp_path, tables, *[f"{k}={v}" for k, v in tiny.items()])
    try:
        seen: list[tuple[str, str]] = []
        result = run_pipeline(TRAINING, config, on_step=lambda step: seen.append((step.task, step.status)))
        out, err = capfd.readouterr()
        assert "KFP Executor" not in out + err and "Warning" not in out + err  # all of it went to the run's log
        assert seen[:2] == [("ingest-op", "RUNNING"), ("ingest-op", "SUCCESS")] and len(seen) == 16
        check_run_overview(result, STEPS["training"])
        gate = next(s for s in result["steps"] if s.task == "evaluate-op")
        assert gate.figure.startswith("promote: NDCG@10 ")
        tasks = result["artifacts"]
        assert {"features-op", "train-op", "evaluate-op", "compress-op", "deploy-op"} <= set(tasks)
        assert (Path(tasks["features-op"]["examples"]) / "examples.parquet").exists()
        assert (Path(tasks["train-op"]["model"]) / "item_embeddings.npy").exists()
        deployment = json.loads(Path(tasks["deploy-op"]["deployment"]).read_text())
        assert deployment["version"] == 1
        champion = read_champion(tmp_path / "artifacts")
        assert champion is not None and "version 1" in champion.note
        client = RecommenderClient(f"127.0.0.1:{config.serving.triton_grpc_port}", timeout_s=10)
        ids, scores = client.recommend([1, 2, 3], [0, 0, 0], exclude_item_ids=[1, 2, 3], k=5)
        client.close()
        assert len(ids) == 5 and not set(ids.tolist()) & {1, 2, 3} and list(scores) == sorted(scores, reverse=True)
    finally:
        stop_detached(settings_from_config(config))


@pytest.mark.integration
def test_local_run_stops_at_the_gate_on_bad_data(tmp_path):
    tables = small_tables()
    tables["interactions"].loc[0, "rating"] = 11.0
    with pytest.raises(PipelineError, match="validate-op") as failure:
        run_pipeline(TRAINING, _files_config(tmp_path, tables))
    runs = [p for p in (tmp_path / "kfp").iterdir() if p.is_dir()]
    assert len(runs) == 1
    assert not (runs[0] / "validate-op" / "validated").exists()
    tasks = {p.name for p in runs[0].iterdir() if p.is_dir() and p.name != "reports"}
    assert tasks == {"ingest-op", "validate-op"}  # no downstream task ran
    assert str(runs[0] / "pipeline.log") in str(failure.value)
    overview = (runs[0] / "index.html").read_text()
    assert '<div class="node FAILURE" title="validate-op">' in overview
    assert '<div class="node SKIPPED" title="train-op">' in overview  # the graph still shows what did not run


def test_monitoring_step_gets_the_request_log_password_from_the_secret(tmp_path):
    from components.request_log_pg import PASSWORD_ENV, PASSWORD_SECRET

    compiled = compile_pipeline(pipeline_named("monitoring"), load_config(), tmp_path)
    _, platform = yaml.safe_load_all(compiled.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    monitor = next(e for name, e in executors.items() if "monitor-op" in name)
    [secret] = monitor["secretAsEnv"]
    assert secret["secretName"] == PASSWORD_SECRET and secret["optional"] is True
    assert secret["keyToEnv"] == [{"secretKey": "password", "envVar": PASSWORD_ENV}]
    assert "CHANGE-ME" not in str(platform)  # the pipeline names the Secret, never holds the password


@pytest.mark.parametrize("name", ["training", "monitoring"])
def test_compiled_pipeline_names_the_secrets_and_holds_none(tmp_path, monkeypatch, name):
    """With every secret in the compiling process's environment, the YAML names the Secrets, never a value."""
    import secrets

    from components.features import REDIS_PASSWORD_SECRET
    from components.request_log_pg import PASSWORD_ENV
    from serving.triton_admin import ADMIN_KEY_ENV, ADMIN_KEY_SECRET

    config = load_config(overrides=["features.online_store=redis",
                                    "serving.request_log=postgresql://recsys@postgres.example:5432/recsys"])
    values = {env: secrets.token_hex(16) for env in (ADMIN_KEY_ENV, config.features.redis_password_env, PASSWORD_ENV)}
    for env, value in values.items():
        monkeypatch.setenv(env, value)
    text = compile_pipeline(pipeline_named(name), config, tmp_path).read_text()
    assert [env for env, value in values.items() if value in text] == []
    _, platform = yaml.safe_load_all(text)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]

    def secret_envs(step: str) -> list[tuple[str, str, str]]:
        found = [(s["secretName"], k["secretKey"], k["envVar"])
                 for e in (e for n, e in executors.items() if step in n) for s in e.get("secretAsEnv", [])
                 for k in s["keyToEnv"]]
        return sorted(set(found))

    assert secret_envs("deploy-op") == [(ADMIN_KEY_SECRET, "key", ADMIN_KEY_ENV)]
    assert secret_envs("features-op") == [(REDIS_PASSWORD_SECRET, "password", config.features.redis_password_env)]
