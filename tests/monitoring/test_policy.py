"""Retraining policy: thresholds, cooldown, de-duplication (retrain lock), decision records, the trigger."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from components.config import write_config
from components.processes import start_ticks
from monitoring.data import MonitoringError
from monitoring.policy import (
    decide,
    decide_and_claim,
    evaluate_signals,
    heartbeat,
    load_state,
    release_retrain,
    running_retrain,
    stale_reason,
    update_running,
)
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


def test_signals_must_persist_for_consecutive_runs(tmp_path: Path) -> None:
    """signal_persistence_runs=2: a single drifted run never retrains; a quiet run or a retrain restarts the count."""
    config = world_config(tmp_path, cooldown_hours=0, signal_persistence_runs=2)
    week = pd.Timedelta(days=7)
    runs = [decide_and_claim(signals, config, now=T + i * week) for i, signals in enumerate([DRIFTED, QUIET, DRIFTED,
                                                                                            DRIFTED])]
    assert [d.retrain for d in runs] == [False, False, False, True]
    assert runs[0].suppressed_by == "persistence"
    assert "1 consecutive monitoring run(s) fired, 2 needed" in runs[0].reason
    assert runs[1].suppressed_by is None and runs[2].suppressed_by == "persistence"  # the quiet run broke the streak
    release_retrain(config, runs[3].decision_id, {"status": "succeeded"})
    after = decide_and_claim(DRIFTED, config, now=T + 4 * week)
    assert not after.retrain and after.suppressed_by == "persistence"  # the retrain ended the streak
    assert decide_and_claim(DRIFTED, config, now=T + 5 * week).retrain
    # the platform default acts on the first run that fires
    assert decide(DRIFTED, world_config(tmp_path / "default"), T).retrain


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


def test_a_monitoring_run_for_an_unreachable_host_fails_before_deciding(tmp_path: Path) -> None:
    """With `kfp.host` set the monitoring pipeline is submitted: a host that does not answer is a clear error, and
    nothing was decided or claimed here (the cluster's run decides)."""
    from components.processes import free_port
    from monitoring.retraining import run_monitoring
    from pipelines.runner import PipelineError

    port = free_port()  # a loopback port that nothing listens on
    config = world_config(tmp_path, cooldown_hours=0)
    config.kfp.host = f"http://127.0.0.1:{port}"
    with pytest.raises(PipelineError, match=f"127.0.0.1:{port} does not answer"):
        run_monitoring(config, now=T)
    assert running_retrain(config, T) is None and load_state(config)["last_outcome"] is None
    with pytest.raises(MonitoringError, match="unknown monitoring pipeline input.*'current_begin'"):
        run_monitoring(config, current_begin=T)


def _claim_in_child(config_path: Path) -> subprocess.Popen:
    """A real monitor process that claims the retrain lock and then keeps running (until it is killed)."""
    code = ("import sys, time, pandas as pd\n"
            "from components.config import load_config\n"
            "from monitoring.policy import decide_and_claim\n"
            f"d = decide_and_claim({DRIFTED!r}, load_config(sys.argv[1]), now=pd.Timestamp({str(T)!r}))\n"
            "print('claimed' if d.retrain else 'refused', flush=True)\n"
            "time.sleep(120)\n")
    return subprocess.Popen([sys.executable, "-c", code, str(config_path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])


def test_lock_of_a_killed_holder_is_stale_at_once(tmp_path: Path) -> None:
    """The holder dies with SIGKILL (no release): the next decision retrains without waiting for the timeout."""
    config = world_config(tmp_path, cooldown_hours=0, retrain_timeout_hours=12)
    holder = _claim_in_child(write_config(config, tmp_path / "config.yaml"))
    try:
        assert holder.stdout.readline().strip() == "claimed"
        lock = running_retrain(config, T)
        assert lock is not None and lock["holder"]["pid"] == holder.pid
        assert lock["holder"]["start_ticks"] == start_ticks(holder.pid)
        blocked = decide_and_claim(DRIFTED, config, now=T + pd.Timedelta(minutes=1))
        assert not blocked.retrain and blocked.suppressed_by == "running"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    host = lock["holder"]["host"]
    assert stale_reason(lock, config, T) == f"its holder, pid {holder.pid} on {host}, is no longer running"
    after = decide_and_claim(DRIFTED, config, now=T + pd.Timedelta(minutes=2))  # 12 h before the lock would expire
    assert after.retrain and running_retrain(config, T)["holder"]["pid"] == os.getpid()


def test_lock_staleness_by_pid_reuse_heartbeat_and_hand_off(tmp_path: Path) -> None:
    config = world_config(tmp_path, cooldown_hours=0, retrain_timeout_hours=12, retrain_heartbeat_timeout_s=60)
    first = decide_and_claim(DRIFTED, config, now=T)
    lock = running_retrain(config, T)
    assert stale_reason(lock, config, T) is None
    # this pid, but another start time: the recorded holder has gone and its pid was given to another process
    reused = {**lock, "holder": {**lock["holder"], "start_ticks": lock["holder"]["start_ticks"] - 1}}
    assert "is no longer running" in stale_reason(reused, config, T)
    # a holder on another host: alive while its heartbeat is recent
    remote = {**lock, "holder": {**lock["holder"], "host": "trainer-0.invalid"}}
    assert stale_reason(remote, config, T) is None
    old = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=90)).isoformat()
    assert "sent no heartbeat for 9" in stale_reason({**remote, "heartbeat_at": old}, config, T)
    heartbeat(config, first.decision_id)
    assert pd.Timestamp(running_retrain(config, T)["heartbeat_at"]) > pd.Timestamp(lock["heartbeat_at"])
    # handed to a submitted run: no holder process, only release or expiry ends it
    update_running(config, first.decision_id, {"run_id": "r-1"}, handed_off=True)
    handed = running_retrain(config, T)
    assert handed["holder"] is None and handed["run"] == {"run_id": "r-1"}
    assert stale_reason(handed, config, T + pd.Timedelta(hours=11)) is None
    assert stale_reason(handed, config, T + pd.Timedelta(hours=12)).startswith("it expired")
    with pytest.raises(MonitoringError, match="holds no lock"):
        heartbeat(config, "someone-else")
