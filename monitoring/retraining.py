"""The one retraining path: the monitoring pipeline (monitoring.pipeline) run here with the KFP local runner, or
submitted to the KFP host (`kfp.host`), as the cluster's schedule runs it; `recsys monitor decide --execute` and
the simulation both come here.

A local run's reports, decision and retrain (the nested training pipeline, with its gate) are read back from the
run folder. When the run fails after its decision claimed the retrain lock, the lock is released with the
failure (the pipeline's own release step did not run)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import Config
from monitoring.data import MonitoringError, Stamp
from monitoring.pipeline import MONITOR_INPUTS, MONITORING
from monitoring.policy import release_retrain
from monitoring.reports import SUMMARY_FILE
from pipelines.runner import PipelineError, run_pipeline, submit_pipeline, task_artifacts

log = logging.getLogger(__name__)
MONITOR_TASK, SUMMARY_OUTPUT = "monitor-op", "summary"
DECISION_FILE = "decision.json"


@dataclass
class MonitoringRun:
    """One run of the monitoring pipeline: where its reports are, the decision, the retrain's outcome.

    A submitted run has only `outcome` (status "submitted", the run id); its decision is made on the cluster."""

    outcome: dict[str, Any]  # status (succeeded / failed / submitted), mode, run_dir, seconds, error or run_id
    report_dir: Path | None = None  # the monitor step's summary folder: summary.json, decision.json, index.html
    summary: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None  # monitoring.policy.Decision.as_dict()
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)  # task -> output -> path, every task

    @property
    def retrain(self) -> bool:
        return bool(self.decision and self.decision["retrain"])


def monitoring_arguments(reference: str | Path | None = None, now: Stamp = None, snapshot_at: Stamp = None,
                         **bounds: Stamp) -> dict[str, str]:
    """Every parameter of the monitoring pipeline besides `config`, as text ("" where None: the default)."""
    unknown = sorted(set(bounds) - set(MONITOR_INPUTS))
    if unknown:
        raise MonitoringError(f"unknown monitoring pipeline input(s) {unknown}; known: {list(MONITOR_INPUTS)}")
    values = {**dict.fromkeys(MONITOR_INPUTS), "reference": reference, "now": now, "snapshot_at": snapshot_at,
              **bounds}
    return {name: "" if value is None else _text(value) for name, value in values.items()}


def _text(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def run_monitoring(config: Config, reference: str | Path | None = None, now: Stamp = None,
                   snapshot_at: Stamp = None, **bounds: Stamp) -> MonitoringRun:
    """Run the monitoring pipeline (reports, the policy, the retrain when it fires) with these inputs: here with
    the KFP local runner, or submitted to `kfp.host` when one is configured."""
    arguments = monitoring_arguments(reference, now, snapshot_at, **bounds)
    if config.kfp.host:
        run_id = submit_pipeline(MONITORING, config, config.kfp.host, config.kfp.experiment, arguments)
        return MonitoringRun({"status": "submitted", "mode": "submitted", "host": config.kfp.host, "run_id": run_id})
    try:
        result = run_pipeline(MONITORING, config, arguments=arguments)
        run_dir, outcome = Path(result["run_dir"]), {"status": "succeeded", "seconds": result["seconds"]}
    except PipelineError as err:
        if err.run_dir is None:
            raise
        run_dir, outcome = Path(err.run_dir), {"status": "failed", "error": str(err)}
    outcome = {**outcome, "mode": "local", "run_dir": str(run_dir)}
    report_dir = run_dir / MONITOR_TASK / SUMMARY_OUTPUT
    if not (report_dir / DECISION_FILE).is_file():
        raise MonitoringError(f"the monitoring pipeline stopped before its decision: {outcome.get('error')}")
    decision = json.loads((report_dir / DECISION_FILE).read_text(encoding="utf-8"))
    if outcome["status"] == "failed" and decision["retrain"]:  # the pipeline's release step did not run
        try:
            release_retrain(config, decision["decision_id"], {"status": "failed", "mode": "pipeline",
                                                              "error": outcome["error"]})
        except MonitoringError as err:  # another decision holds the lock by now
            log.warning("retrain lock not released: %s", err)
    decision["outcome"] = outcome if decision["retrain"] else None
    summary = json.loads((report_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    log.info("monitoring pipeline %s: %s (%s)", outcome["status"], "RETRAIN" if decision["retrain"] else
             "no retrain", decision["reason"])
    return MonitoringRun(outcome, report_dir, summary, decision, task_artifacts(run_dir))
