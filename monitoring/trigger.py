"""The retraining trigger: run (embedded KFP) or submit (KFP host) the training pipeline for a decision.

The new model replaces the champion only through the training pipeline's evaluation gate; the trigger
just starts that pipeline and keeps the retrain lock while it runs (see monitoring.policy).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Config
from components.errors import RecsysError
from monitoring.data import MonitoringError
from monitoring.policy import (
    Decision,
    decide_and_claim,
    heartbeats,
    record_decision,
    release_retrain,
    update_running,
)

log = logging.getLogger(__name__)


def run_retrain(config: Config, decision: Decision) -> dict[str, Any]:
    """Start the training pipeline for a decision that owns the retrain lock; return the outcome.

    With `kfp.host` set the run is submitted and the lock, handed to that run, stays until `release_retrain` (or
    its expiry); otherwise the pipeline runs here with the KFP local runner, this process holds the lock (with
    heartbeats) and releases it when the pipeline ends."""
    if not decision.retrain:
        raise MonitoringError(f"decision {decision.decision_id} does not call for a retrain ({decision.reason})")
    try:
        from pipelines import runner  # imported lazily: compiling imports every component
    except ImportError as err:
        release_retrain(config, decision.decision_id, {"status": "failed", "error": f"no pipeline runner: {err}"})
        raise MonitoringError(f"cannot trigger retraining: pipelines.runner is not importable ({err})") from err
    if config.kfp.host:
        try:
            run_id = runner.submit_pipeline("training", config, config.kfp.host, config.kfp.experiment)
        except RecsysError as err:
            outcome = {"status": "failed", "mode": "submitted", "error": str(err)}
            release_retrain(config, decision.decision_id, outcome)
            return outcome
        outcome = {"status": "submitted", "mode": "submitted", "host": config.kfp.host, "run_id": run_id}
        update_running(config, decision.decision_id, outcome, handed_off=True)
        return outcome
    try:
        with heartbeats(config, decision.decision_id):  # this process holds the lock while the pipeline runs
            result = runner.run_pipeline("training", config)
        outcome = {"status": "succeeded", "mode": "local", "run_dir": result.get("run_dir"),
                   "seconds": result.get("seconds")}
    except RecsysError as err:
        outcome = {"status": "failed", "mode": "local", "error": str(err)}
    except Exception as err:  # noqa: BLE001 - any crash must still free the lock; re-raised below
        release_retrain(config, decision.decision_id, {"status": "failed", "mode": "local", "error": repr(err)})
        raise
    release_retrain(config, decision.decision_id, outcome)
    return outcome


def decide_and_trigger(signals: dict[str, float | None], config: Config, *, execute: bool = True,
                       now: pd.Timestamp | str | None = None, out_dir: str | Path | None = None) -> Decision:
    """Apply the policy to the signals; when a retrain is due and `execute`, start it and record the outcome."""
    decision = decide_and_claim(signals, config, now=now, out_dir=out_dir)
    if decision.retrain and execute:
        decision.outcome = run_retrain(config, decision)
        record_decision(config, decision, out_dir)  # the journal gets a second line with the outcome
    return decision
