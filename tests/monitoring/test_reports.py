"""The whole monitoring run on a simulated world: same distribution vs shifted, CLI, browser, KFP component."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitoring.data import MonitoringError
from monitoring.policy import decide, decide_and_claim
from monitoring.reports import generate_reports
from monitoring.trigger import monitor_and_decide
from recsys.main import app
from tests.monitoring.world import item_embeddings, make_world, window_bounds, world_config


@pytest.fixture(scope="module")
def same_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("same")
    canonical, log_path = make_world(root, shift=False)
    summary = generate_reports(world_config(root), canonical, log_path, root / "reports",
                             embeddings_dir=item_embeddings(root / "emb"), **window_bounds())
    return root, summary


@pytest.fixture(scope="module")
def shifted_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """The shifted world, reported through the CLI (`recsys monitor report`)."""
    root = tmp_path_factory.mktemp("shifted")
    canonical, log_path = make_world(root, shift=True)
    b = {k: v.isoformat() for k, v in window_bounds().items()}
    sets = [a for s in ["paths.artifacts_dir=" + str(root / "artifacts"),
                        "monitoring.state_path=" + str(root / "state" / "policy.json"),
                        "monitoring.workspace_dir=" + str(root / "workspace"),
                        "evaluate.cold_start_items=5"] for a in ("--set", s)]
    result = CliRunner().invoke(app, [*sets, "monitor", "report", "--reference", str(canonical), "--log",
                                      str(log_path), "--out", str(root / "reports"), "--embeddings",
                                      str(item_embeddings(root / "emb")),
                                      *[a for k, v in b.items() for a in (f"--{k.replace('_', '-')}", v)]])
    assert result.exit_code == 0, result.output
    return root, json.loads((root / "reports" / "summary.json").read_text()), result.output


def test_same_distribution_world_is_quiet(same_world: tuple[Path, dict]) -> None:
    root, s = same_world
    assert s["drift"]["share"] < 0.5 and s["drift"]["total_columns"] == 10  # 8 features + 2 embeddings
    assert s["quality"]["current"]["evaluable_requests"] > 350 and s["signals"]["quality_drop"] < 0.2
    assert s["signals"]["fairness_ratio"] > 0.5
    assert s["exposure"]["catalogue_long_tail_share"] == pytest.approx(0.8)
    decision = decide(s["signals"], world_config(root))
    assert not decision.retrain and decision.fired == []
    files = {p.name for p in (root / "reports").iterdir()}
    assert {"index.html", "summary.json", "drift_user_features.html", "drift_interaction_features.html",
            "drift_user_activity.html", "drift_recommendations.html", "drift_user_embeddings.html",
            "drift_item_embeddings.html"} <= files
    assert json.loads((root / "reports" / "summary.json").read_text())["signals"] == s["signals"]


def test_shifted_world_fires_every_signal(shifted_world: tuple[Path, dict, str]) -> None:
    root, s, output = shifted_world
    assert '"drift_share"' in output and "index.html" in output
    reports = s["drift"]["reports"]
    assert reports["user_features"]["columns"]["age"]["drifted"]
    assert reports["interaction_features"]["columns"]["rating"]["drifted"]
    assert reports["recommendations"]["columns"]["score"]["drifted"]
    assert reports["user_embeddings"]["columns"]["user_embeddings"]["drifted"]
    assert s["signals"]["drift_share"] >= 0.5 and s["signals"]["quality_drop"] >= 0.2
    assert s["fairness"]["groups"]["gender"]["worst"] == "F" and s["signals"]["fairness_ratio"] < 0.5
    assert s["exposure"]["long_tail_share"] > 0.9 > s["exposure"]["reference_long_tail_share"]


def test_cli_decide(shifted_world: tuple[Path, dict, str]) -> None:
    root = shifted_world[0]
    sets = ["--set", f"monitoring.state_path={root / 'state' / 'policy.json'}"]
    summary = str(root / "reports" / "summary.json")
    dry = CliRunner().invoke(app, [*sets, "monitor", "decide", summary])
    assert dry.exit_code == 0 and "RETRAIN" in dry.output and "dry run" in dry.output
    assert not (root / "state" / "decisions.jsonl").exists()  # a dry run records nothing
    missing = CliRunner().invoke(app, [*sets, "monitor", "decide", str(root / "nope.json")])
    assert missing.exit_code == 1 and "does not exist" in " ".join(missing.output.split())  # rich wraps lines


def test_monitor_and_decide_claims_once(tmp_path: Path, shifted_world: tuple[Path, dict, str]) -> None:
    root = shifted_world[0]
    config = world_config(tmp_path)
    summary, first = monitor_and_decide(config, root / "canonical", root / "log.sqlite", tmp_path / "r1",
                                        **window_bounds())
    second = decide_and_claim(summary["signals"], config)  # a second monitor while the retrain runs
    assert first.retrain and {f["name"] for f in first.fired} == {"drift_share", "quality_drop", "fairness_ratio"}
    assert not second.retrain and second.suppressed_by == "running"
    assert json.loads((tmp_path / "r1" / "decision.json").read_text())["decision_id"] == first.decision_id


def test_clear_errors_for_missing_inputs(tmp_path: Path, shifted_world: tuple[Path, dict, str]) -> None:
    from components.request_logs import open_request_log

    root, config = shifted_world[0], world_config(tmp_path)
    with pytest.raises(MonitoringError, match="does not exist"):
        generate_reports(config, root / "canonical", tmp_path / "missing.sqlite", tmp_path / "out")
    with pytest.raises(MonitoringError, match="canonical table 'interactions' missing"):
        generate_reports(config, tmp_path, root / "log.sqlite", tmp_path / "out")
    open_request_log(tmp_path / "empty.sqlite").close()
    with pytest.raises(MonitoringError, match="holds no requests"):
        generate_reports(config, root / "canonical", tmp_path / "empty.sqlite", tmp_path / "out")
    with pytest.raises(MonitoringError, match="is not before its end"):
        generate_reports(config, root / "canonical", root / "log.sqlite", tmp_path / "out",
                       current_start="2026-03-01", current_end="2026-02-01")


@pytest.mark.integration
@pytest.mark.parametrize("page", ["index.html", "drift_user_features.html", "drift_user_embeddings.html"])
def test_reports_open_in_headless_chromium(page: str, shifted_world: tuple[Path, dict, str]) -> None:
    from benchmarks.browser import CHROMIUM, check_page

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: run scripts/system_deps.sh")
    root = shifted_world[0]
    check = check_page(root / "reports" / page, root / "screenshots" / f"{page}.png")
    assert check.errors == [], check.errors  # no console errors, no exceptions, no failed (network) loads
    assert check.text_length > 300  # the page rendered (Evidently draws with JavaScript)
    assert check.screenshot.stat().st_size > 10_000


def test_each_run_adds_its_snapshots_to_the_evidently_workspace(shifted_world: tuple[Path, dict, str]) -> None:
    from evidently.ui.workspace import Workspace

    from monitoring.workspace import PANELS, SIGNALS_TAG

    root, s, _ = shifted_world
    workspace = Workspace(str(root / "workspace"))
    [project] = workspace.search_project("movielens-100k")  # the deployment's project: the data set's name
    ids = workspace.list_runs(project.id)
    assert {str(i) for i in ids} == set(s["evidently"]["snapshots"])
    runs = [workspace.get_run(project.id, i) for i in ids]
    window_end = window_bounds()["current_end"].tz_localize(None).to_pydatetime()
    assert {r.timestamp for r in runs} == {window_end}  # stamped with the window's end, not the wall clock
    assert {t for r in runs for t in r.tags} >= {"drift", "user_features", "recommendations", "user_embeddings_pca"}
    [signals] = [r for r in runs if SIGNALS_TAG in r.tags]
    values = {m.metric_value_location.metric.params["column"]: m.value for m in signals.metric_results.values()}
    drift = s["drift"]["reports"]
    assert values == pytest.approx({
        "drift_share": s["signals"]["drift_share"], "hit_rate": s["signals"]["hit_rate"], "ndcg": s["signals"]["ndcg"],
        "fairness_ratio": s["signals"]["fairness_ratio"], "long_tail_share": s["signals"]["long_tail_share"],
        "exposure_gini": s["signals"]["exposure_gini"],
        "user_embedding_auc": drift["user_embeddings"]["columns"]["user_embeddings"]["value"],
        "item_embedding_auc": drift["item_embeddings"]["columns"]["item_embeddings"]["value"]})
    assert [p.title for p in project.dashboard.model().panels] == [title for title, _, _ in PANELS]


@pytest.mark.integration
def test_monitor_ui_serves_the_dashboard_on_loopback(shifted_world: tuple[Path, dict, str]) -> None:
    """`recsys monitor ui --detach` runs `evidently ui` over the workspace; Chromium (offline) draws the dashboard."""
    from benchmarks.browser import check_page
    from components.processes import free_port, http_status
    from monitoring.workspace import PANELS

    root, s, _ = shifted_world
    port = free_port()
    sets = ["--set", f"paths.artifacts_dir={root / 'artifacts'}",
            "--set", f"monitoring.workspace_dir={root / 'workspace'}"]
    started = CliRunner().invoke(app, [*sets, "monitor", "ui", "--port", str(port), "--detach"])
    assert started.exit_code == 0, started.output
    try:
        url = f"http://127.0.0.1:{port}"
        assert f"Evidently UI at {url}" in started.output
        again = CliRunner().invoke(app, [*sets, "monitor", "ui", "--port", str(port), "--detach"])
        assert again.exit_code == 1 and "already answers" in " ".join(again.output.split())
        check = check_page(f"{url}/projects/{s['evidently']['project_id']}", root / "screenshots" / "evidently.png",
                           settle_s=5.0)
        assert check.errors == [], check.errors  # its JavaScript comes from the package: no network needed
        for title, _, _ in PANELS:
            assert title in check.text
        assert "movielens-100k" in check.text and "Timestamps" in check.text  # the panels drew their axes
    finally:
        stopped = CliRunner().invoke(app, [*sets, "monitor", "ui-stop", "--port", str(port)])
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    assert http_status(f"{url}/api/projects") == 0


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task")
def test_decide_execute_runs_the_monitoring_pipeline(tmp_path: Path, shifted_world: tuple[Path, dict, str]) -> None:
    """`recsys monitor decide --execute` runs the monitoring pipeline in the KFP local runner over the report's
    windows: reference step -> reports + policy (embeddings from the champion) -> the nested training pipeline,
    which fails here at its ingest (the configured files do not exist): the command says so and exits 1, and the
    retrain lock the decision claimed is released with the failure."""
    from components.config import load_config
    from monitoring.policy import load_state, running_retrain

    root = shifted_world[0]
    registry = tmp_path / "artifacts" / "registry"
    registry.mkdir(parents=True)
    (registry / "champion.json").write_text(json.dumps({"model_dir": str(item_embeddings(tmp_path / "model"))}))
    sets = {"paths.artifacts_dir": tmp_path / "artifacts", "paths.data_dir": tmp_path / "data",
            "paths.pipeline_root": tmp_path / "kfp", "monitoring.state_path": tmp_path / "state" / "policy.json",
            "monitoring.workspace_dir": tmp_path / "workspace", "serving.request_log": root / "log.sqlite",
            "evaluate.cold_start_items": 5, "data.source": "files",
            **{f"data.{t}_path": tmp_path / f"missing_{t}.csv" for t in ("interactions", "users", "items")}}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(app, [*args, "monitor", "decide", str(root / "reports" / "summary.json"), "--execute",
                                      "--reference", str(root / "canonical")])
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and "RETRAIN" in output and "the retrain failed" in output, output
    [run_dir] = (tmp_path / "kfp").glob("recsys-monitoring-*")
    summary_dir = run_dir / "monitor-op" / "summary"
    summary = json.loads((summary_dir / "summary.json").read_text())
    assert summary["drift"]["reports"]["user_embeddings"]["status"] == "ok"
    assert summary["windows"] == shifted_world[1]["windows"]  # the report's windows, passed as the run's inputs
    assert summary["signals"]["drift_share"] == pytest.approx(shifted_world[1]["signals"]["drift_share"])
    assert json.loads((summary_dir / "decision.json").read_text())["retrain"] is True
    assert (summary_dir.parent / "reports").read_text().startswith("<!DOCTYPE html>")
    assert (run_dir / "reference-op" / "canonical" / "interactions.parquet").is_file()  # a copy, nothing ingested
    config = load_config(overrides=[f"{k}={v}" for k, v in sets.items()])
    assert running_retrain(config) is None
    assert load_state(config)["last_outcome"]["status"] == "failed"
    assert "ingest-op" in load_state(config)["last_outcome"]["error"]
