"""Retraining policy: monitoring signals + thresholds -> a decision, with persistence, a cooldown and de-duplication.

State lives next to `monitoring.state_path`:
- the state file (JSON): when a retrain was last triggered, and the outcome of the last one;
- `retrain.lock` (JSON): the retrain now running and who holds it. It is stale after `retrain_timeout_hours`,
  and at once when its holder process (pid, host, start time) has died on this host; a holder on another
  host refreshes `heartbeat_at` and its lock is stale when that is older than `retrain_heartbeat_timeout_s`.
  A lock handed to a pipeline (no holder process) ends by `release_retrain` or its expiry;
- `decisions.jsonl`: every decision record, one per line; with `signal_persistence_runs` > 1 the policy acts only
  when the runs before this one fired too (a retrain ends the streak), so a one-week blip never retrains.
A process-wide file lock makes decide + claim atomic, so two monitors never trigger twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.atomic import write_json_atomic
from components.config import Config
from components.processes import ProcessIdentity
from monitoring.data import MonitoringError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Signal:
    name: str
    value: float | None
    threshold: float
    rule: str  # ">=" fires when value >= threshold, "<" when value < threshold
    fired: bool


@dataclass
class Decision:
    """The decision record: which signals fired (with values), and whether a retrain was started."""

    decision_id: str
    at: str
    retrain: bool
    reason: str
    fired: list[dict[str, Any]]
    signals: list[dict[str, Any]]
    suppressed_by: str | None = None  # "cooldown" | "running" | "persistence" | None
    running: dict[str, Any] | None = None
    last_triggered_at: str | None = None
    outcome: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now(now: pd.Timestamp | str | None) -> pd.Timestamp:
    ts = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def evaluate_signals(signals: dict[str, float | None], config: Config) -> list[Signal]:
    """Compare the summary's signal values with the config thresholds (a missing value never fires)."""
    m = config.monitoring
    rules = [("drift_share", m.drift_share_threshold, ">="), ("quality_drop", m.quality_drop_threshold, ">="),
             ("fairness_ratio", m.fairness_ratio_threshold, "<")]
    out = []
    for name, threshold, rule in rules:
        value = signals.get(name)
        fired = value is not None and (value >= threshold if rule == ">=" else value < threshold)
        out.append(Signal(name, value, threshold, rule, bool(fired)))
    return out


# ---- state -------------------------------------------------------------------------------------------------
def _paths(config: Config) -> tuple[Path, Path, Path, Path]:
    state = Path(config.monitoring.state_path)
    return state, state.with_name("retrain.lock"), state.with_name("decisions.jsonl"), state.with_name(".policy.flock")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise MonitoringError(f"policy file {path} is not valid JSON ({err}); fix or delete it") from err


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_json_atomic(path, data, default=str)


def load_state(config: Config) -> dict[str, Any]:
    return _read_json(_paths(config)[0]) or {"last_triggered_at": None, "last_outcome": None}


@contextmanager
def _policy_lock(config: Config) -> Iterator[None]:
    flock = _paths(config)[3]
    flock.parent.mkdir(parents=True, exist_ok=True)
    with open(flock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stale_reason(lock: dict[str, Any], config: Config, now: pd.Timestamp | str | None = None) -> str | None:
    """Why a retrain lock no longer holds (None while it does): past its expiry (at `now`), its holder process
    dead or its pid reused (this host), or its heartbeat older than `retrain_heartbeat_timeout_s` (another host;
    heartbeats are wall-clock times)."""
    if _now(now) >= pd.Timestamp(lock["expires_at"]):
        return f"it expired at {lock['expires_at']}"
    if not lock.get("holder"):
        return None  # handed to a pipeline: it ends by release_retrain or its expiry
    holder = ProcessIdentity.from_dict(lock["holder"])
    alive = holder.alive()
    if alive is False:
        return f"its holder, pid {holder.pid} on {holder.host}, is no longer running"
    if alive is None:
        silent_s = (pd.Timestamp.now(tz="UTC") - pd.Timestamp(lock["heartbeat_at"])).total_seconds()
        if silent_s > config.monitoring.retrain_heartbeat_timeout_s:
            return f"its holder on {holder.host} (pid {holder.pid}) sent no heartbeat for {silent_s:.0f} s"
    return None


def running_retrain(config: Config, now: pd.Timestamp | str | None = None) -> dict[str, Any] | None:
    """The running retrain's lock record, or None (no lock, or a stale one: see stale_reason)."""
    lock = _read_json(_paths(config)[1])
    if lock is None:
        return None
    why = stale_reason(lock, config, now)
    if why is not None:
        log.warning("retrain lock %s is stale: %s", lock.get("decision_id"), why)
        return None
    return lock


# ---- decisions ---------------------------------------------------------------------------------------------
def firing_streak(config: Config, limit: int) -> int:
    """How many of the latest recorded decisions (at most `limit`) fired a signal without starting a retrain."""
    journal = _paths(config)[2]
    if limit <= 0 or not journal.exists():
        return 0
    with open(journal, encoding="utf-8") as handle:
        latest = deque(handle, maxlen=limit)
    streak = 0
    for line in reversed(latest):
        record = json.loads(line)
        if not record["fired"] or record["retrain"]:
            break
        streak += 1
    return streak


def decide(signals: dict[str, float | None], config: Config, now: pd.Timestamp | str | None = None) -> Decision:
    """The decision for these signal values given the current state (reads state, changes nothing)."""
    at = _now(now)
    evaluated = evaluate_signals(signals, config)
    fired = [asdict(s) for s in evaluated if s.fired]
    state = load_state(config)
    decision = Decision(decision_id=f"{at.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}", at=at.isoformat(),
                        retrain=False, reason="", fired=fired, signals=[asdict(s) for s in evaluated],
                        last_triggered_at=state.get("last_triggered_at"))
    if not fired:
        decision.reason = "no signal crossed its threshold"
        return decision
    names = ", ".join(f"{f['name']}={f['value']:.4f} ({f['rule']} {f['threshold']})" for f in fired)
    running = running_retrain(config, at)
    last = state.get("last_triggered_at")
    cooldown = pd.Timedelta(hours=config.monitoring.cooldown_hours)
    if running is not None:
        decision.suppressed_by, decision.running = "running", running
        decision.reason = f"fired: {names}; suppressed: retrain {running['decision_id']} is still running"
    elif last is not None and at < pd.Timestamp(last) + cooldown:
        decision.suppressed_by = "cooldown"
        decision.reason = (f"fired: {names}; suppressed: cooldown until "
                           f"{(pd.Timestamp(last) + cooldown).isoformat()}")
    elif (streak := firing_streak(config, config.monitoring.signal_persistence_runs - 1) + 1) \
            < config.monitoring.signal_persistence_runs:
        decision.suppressed_by = "persistence"
        decision.reason = (f"fired: {names}; suppressed: {streak} consecutive monitoring run(s) fired, "
                           f"{config.monitoring.signal_persistence_runs} needed")
    else:
        decision.retrain, decision.reason = True, f"fired: {names}"
    return decision


def _claim(config: Config, decision: Decision, at: pd.Timestamp, hold: bool) -> bool:
    state_path, lock_path, _, _ = _paths(config)
    if running_retrain(config, at) is not None:
        return False
    record = {"decision_id": decision.decision_id, "started_at": at.isoformat(),
              "expires_at": (at + pd.Timedelta(hours=config.monitoring.retrain_timeout_hours)).isoformat(),
              "holder": ProcessIdentity.of(os.getpid()).to_dict() if hold else None,
              "heartbeat_at": pd.Timestamp.now(tz="UTC").isoformat(), "run": None}
    _write_json(lock_path, record)  # replaces a stale lock (checked above, under the policy lock)
    state = load_state(config)
    state["last_triggered_at"] = at.isoformat()
    state["last_decision_id"] = decision.decision_id
    _write_json(state_path, state)
    decision.running = record
    return True


def record_decision(config: Config, decision: Decision, out_dir: str | Path | None = None) -> Path | None:
    """Append the decision to decisions.jsonl and, when out_dir is given, write out_dir/decision.json."""
    _, _, journal, _ = _paths(config)
    journal.parent.mkdir(parents=True, exist_ok=True)
    with open(journal, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(decision.as_dict(), default=str) + "\n")
    if out_dir is None:
        return None
    path = Path(out_dir) / "decision.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(decision.as_dict(), indent=2, default=str), encoding="utf-8")
    return path


def decide_and_claim(signals: dict[str, float | None], config: Config, now: pd.Timestamp | str | None = None,
                     out_dir: str | Path | None = None, hold: bool = True) -> Decision:
    """Decide and, if a retrain is due, claim the retrain lock and start the cooldown, atomically.

    `decision.retrain` is True only for the caller that now owns the retrain; it must end it with
    `release_retrain` (or let the lock expire). hold=True: this process holds the lock (it is stale as soon
    as the process dies); hold=False: the retrain runs elsewhere (later pipeline steps) and only the expiry
    or `release_retrain` ends it."""
    Path(config.monitoring.state_path).parent.mkdir(parents=True, exist_ok=True)
    at = _now(now)
    with _policy_lock(config):
        decision = decide(signals, config, at)
        if decision.retrain and not _claim(config, decision, at, hold):
            decision.retrain, decision.suppressed_by = False, "running"
            decision.reason += "; suppressed: another retrain claimed the lock first"
        record_decision(config, decision, out_dir)
    log.info("retraining decision %s: %s (%s)", decision.decision_id, "RETRAIN" if decision.retrain else "no retrain",
             decision.reason)
    return decision


def _update_lock(config: Config, decision_id: str, **fields: Any) -> None:
    _, lock_path, _, _ = _paths(config)
    with _policy_lock(config):
        lock = _read_json(lock_path)
        if lock is None or lock["decision_id"] != decision_id:
            raise MonitoringError(f"retrain {decision_id} holds no lock at {lock_path}")
        _write_json(lock_path, {**lock, **fields})


def update_running(config: Config, decision_id: str, run: dict[str, Any], handed_off: bool = False) -> None:
    """Attach run details (e.g. a KFP run id) to the running retrain's lock; handed_off=True when the run goes
    on without this process (a submitted run): the lock then has no holder process and ends by release or expiry."""
    fields: dict[str, Any] = {"run": run}
    if handed_off:
        fields["holder"] = None
    _update_lock(config, decision_id, **fields)


def heartbeat(config: Config, decision_id: str) -> None:
    """Refresh the running retrain's heartbeat (what tells other hosts that its holder still runs)."""
    _update_lock(config, decision_id, heartbeat_at=pd.Timestamp.now(tz="UTC").isoformat())


@contextmanager
def heartbeats(config: Config, decision_id: str) -> Iterator[None]:
    """Refresh the retrain's heartbeat every quarter of `retrain_heartbeat_timeout_s` while the block runs."""
    stop = threading.Event()
    period = config.monitoring.retrain_heartbeat_timeout_s / 4

    def beat() -> None:
        while not stop.wait(period):
            try:
                heartbeat(config, decision_id)
            except (MonitoringError, OSError) as err:  # released or unwritable: nothing left to keep alive
                log.warning("retrain %s heartbeat stopped: %s", decision_id, err)
                return

    thread = threading.Thread(target=beat, name=f"retrain-heartbeat-{decision_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def release_retrain(config: Config, decision_id: str, outcome: dict[str, Any]) -> None:
    """End the running retrain `decision_id`: remove its lock and store the outcome in the state."""
    state_path, lock_path, _, _ = _paths(config)
    with _policy_lock(config):
        lock = _read_json(lock_path)
        if lock is not None and lock["decision_id"] != decision_id:
            raise MonitoringError(f"retrain lock {lock_path} belongs to {lock['decision_id']}, not {decision_id}")
        lock_path.unlink(missing_ok=True)
        state = load_state(config)
        state["last_outcome"] = {"decision_id": decision_id, "ended_at": _now(None).isoformat(), **outcome}
        _write_json(state_path, state)
    log.info("retrain %s released: %s", decision_id, outcome.get("status"))
