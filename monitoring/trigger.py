"""The retraining decision: reports then the policy (`monitor_and_decide`, the monitoring pipeline's step).

The retrain itself is the monitoring pipeline's nested training pipeline (monitoring.retraining runs or submits
it), so a new model replaces the champion only through the training pipeline's evaluation gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Config
from monitoring.policy import Decision, decide_and_claim
from monitoring.reports import generate_reports


def monitor_and_decide(config: Config, reference_dir: str | Path, log_path: str | Path, out_dir: str | Path,
                       now: Any = None, **windows: Any) -> tuple[dict[str, Any], Decision]:
    """Reports (monitoring.reports.generate_reports, `windows` its explicit bounds), then the policy decision
    (claiming the retrain lock when a retrain is due); writes decision.json beside summary.json.

    The lock goes to the pipeline's later steps (no holder process): `retrain_done_op` or its expiry ends it."""
    summary = generate_reports(config, reference_dir, log_path, out_dir, **windows)
    decision = decide_and_claim(summary["signals"], config, now=now, out_dir=out_dir, hold=False)
    return summary, decision
