"""Retraining policy: thresholds, cooldown, de-duplication (retrain lock), decision records, the trigger."""

import json
import threading
from pathlib import Path

import pandas as pd
import pytest

from monitoring.data import MonitoringError
from monitoring.policy import (
    decide,
    decide_and_claim,
    evaluate_signals,
    load_state,
    release_retrain,
    running_retrain,
)
from monitoring.trigger import run_retrain
from tests.monitoring.world import world_config

T = pd.Timestamp("2026-05-01 00:00", tz="UTC")
QUIET = {"drift_share": 0.1, "quality_drop": 0.05, "fairness_ratio": 0.9}
DRIFTED = {"drift_share": 0.75, "quality_drop": 0.05, "fairness_ratio": 0.9}


def test_thresholds(tmp_path: Path) -> None:
    config = world_config(tmp_path)  # drift 0.5 (>=), quality drop 0.2 (>=), fairness ratio 0.5 (<)
    fired = {s.name for s in evaluate_signals({"drift_share": 0.5, "quality_drop": 0.19, "fairness_ratio": 0.49},
                                              config) if s.fired}
    assert fired == {"drift_share", "fairness_ratio"}
    assert not any(s.fired for s in evaluate_signals({"drift_share": None, "quality_drop": None}, config))
    d = decide(QUIET, config, T)
    assert not d.retrain and d.fired == [] and d.reason == "no signal crossed its threshold"


def test_cooldown_and_decision_record(tmp_path: Path) -> None:
    config = world_config(tmp_path, cooldown_hours=24, retrain_timeout_hours=2)
    first = decide_and_claim(DRIFTED, config, now=T, out_dir=tmp_path / "run1")
    assert first.retrain and first.fired[0]["name"] == "drift_share" and first.fired[0]["value"] == 0.75
    record = json.loads((tmp_path / "run1" / "decision.json").read_text())
    assert record["retrain"] is True and record["fired"][0]["threshold"] == 0.5
    release_retrain(config, first.decision_id, {"status": "succeeded"})
    assert load_state(config)["last_outcome"]["status"] == "succeeded"
    # the retrain is over, but the cooldown still runs
    later = decide_and_claim(DRIFTED, config, now=T + pd.Timedelta(hours=5))
    assert not later.retrain and later.suppressed_by == "cooldown" and "cooldown until" in later.reason
    after = decide_and_claim(DRIFTED, config, now=T + pd.Timedelta(hours=25))
    assert after.retrain
    journal = (Path(config.monitoring.state_path).parent / "decisions.jsonl").read_text().splitlines()
    assert [json.loads(line)["retrain"] for line in journal] == [True, False, True]


def test_no_second_trigger_while_a_retrain_runs(tmp_path: Path) -> None:
    config = world_config(tmp_path, cooldown_hours=0, retrain_timeout_hours=2)
    first = decide_and_claim(DRIFTED, config, now=T)
    assert first.retrain and running_retrain(config, T)["decision_id"] == first.decision_id
    second = decide_and_claim(DRIFTED, config, now=T + pd.Timedelta(minutes=30))
    assert not second.retrain and second.suppressed_by == "running"
    assert second.running["decision_id"] == first.decision_id
    with pytest.raises(MonitoringError, match="belongs to"):
        release_retrain(config, second.decision_id, {"status": "succeeded"})
    # a lock older than retrain_timeout_hours is stale: the next decision may retrain
    third = decide_and_claim(DRIFTED, config, now=T + pd.Timedelta(hours=3))
    assert third.retrain and running_retrain(config, T + pd.Timedelta(hours=3))["decision_id"] == third.decision_id


def test_concurrent_monitors_trigger_once(tmp_path: Path) -> None:
    config = world_config(tmp_path, cooldown_hours=0)
    decisions = []

    def monitor() -> None:
        decisions.append(decide_and_claim(DRIFTED, config, now=T))

    threads = [threading.Thread(target=monitor) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(d.retrain for d in decisions) == 1


def test_trigger_releases_the_lock_when_submission_fails(tmp_path: Path) -> None:
    """A KFP host that does not answer: the trigger records the failure and frees the retrain lock."""
    pytest.importorskip("pipelines.runner")
    import socket

    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = world_config(tmp_path, cooldown_hours=0)
    config.kfp.host = f"http://127.0.0.1:{port}"
    decision = decide_and_claim(DRIFTED, config, now=T)
    outcome = run_retrain(config, decision)
    assert outcome["status"] == "failed" and str(port) in outcome["error"]
    assert running_retrain(config, T) is None and load_state(config)["last_outcome"]["status"] == "failed"
    with pytest.raises(MonitoringError, match="does not call for a retrain"):
        run_retrain(config, decide(QUIET, config, T))
