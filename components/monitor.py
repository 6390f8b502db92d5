"""Monitoring step: drift, quality and fairness reports from the request log, then the retraining decision.

The work lives in the `monitoring` package (imported lazily); this module is its plain entry point for the CLI
and its KFP component for the monitoring pipeline (collect -> reports -> conditional retrain).
"""

from pathlib import Path
from typing import Any

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.config import Config
from components.kfp_support import step


def run_monitoring(config: Config, reference_dir: str | Path, log_path: str | Path, out_dir: str | Path,
                   **windows: Any) -> dict[str, Any]:
    """Write every monitoring report into `out_dir` (index.html, drift_*.html, summary.json); return the summary.

    `windows` may hold explicit bounds (UTC timestamps or ISO strings): reference_start/_end,
    baseline_start/_end, current_start/_end, embeddings_dir (item_ids.npy + item_embeddings.npy;
    default: the champion model's) and snapshot_at (the time of the run's snapshots in the Evidently workspace;
    default: the current window's end)."""
    from monitoring.reports import generate_reports

    return generate_reports(config, reference_dir, log_path, out_dir, **windows)


def monitor_and_decide(config: Config, reference_dir: str | Path, log_path: str | Path, out_dir: str | Path,
                       now: Any = None, **windows: Any) -> tuple[dict[str, Any], Any]:
    """Reports, then the policy decision (claiming the retrain lock when a retrain is due); writes decision.json.

    The lock goes to the pipeline's later steps (no holder process): `retrain_done_op` or its expiry ends it."""
    from monitoring.policy import decide_and_claim

    summary = run_monitoring(config, reference_dir, log_path, out_dir, **windows)
    decision = decide_and_claim(summary["signals"], config, now=now, out_dir=out_dir, hold=False)
    return summary, decision


@step
def monitor_op(
    config: str,
    canonical: Input[Dataset],
    reports: Output[HTML],
    summary: Output[Artifact],
    metrics: Output[Metrics],
) -> bool:
    """KFP: monitoring reports over `serving.request_log` against the canonical tables; returns retrain?.

    `summary` is a folder: summary.json, decision.json, index.html and the Evidently drift pages;
    `reports` is the overview page. When True is returned the retrain lock is held by the decision in
    summary.metadata["decision_id"]: end it with `retrain_done_op` (or it expires)."""
    import json
    import shutil
    from pathlib import Path

    from components.config import config_from_text
    from components.monitor import monitor_and_decide

    cfg = config_from_text(config)
    out = Path(summary.path)
    result, decision = monitor_and_decide(cfg, canonical.path, cfg.serving.request_log, out)
    shutil.copyfile(out / "index.html", reports.path)
    summary.metadata["decision_id"] = decision.decision_id
    summary.metadata["retrain"] = decision.retrain
    summary.metadata["reason"] = decision.reason
    for name, value in result["signals"].items():
        if value is not None:
            metrics.log_metric(name, float(value))
    metrics.log_metric("retrain", float(decision.retrain))
    print(json.dumps({"decision": decision.reason, "signals": result["signals"]}, default=str))
    return bool(decision.retrain)


@step
def retrain_done_op(config: str, summary: Input[Artifact], status: str = "succeeded") -> str:
    """KFP: release the retrain lock taken by monitor_op once the retraining branch has finished."""
    from components.config import config_from_text
    from monitoring.policy import release_retrain

    decision_id = str(summary.metadata["decision_id"])
    release_retrain(config_from_text(config), decision_id, {"status": status, "mode": "pipeline"})
    return decision_id
