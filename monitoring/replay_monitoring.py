"""The replay's weekly monitoring: the monitoring pipeline (monitoring.retraining) over each replayed week, with
the inputs the replay computes, and the retrain it may run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from components.config import Config
from monitoring.replay_retrain import deployed_version, went_live, with_data
from monitoring.replay_traffic import tables_up_to_now
from monitoring.replay_world import WEEK, Simulation, WeekRecord

log = logging.getLogger(__name__)


def scaled_horizon(config: Config, week: WeekRecord) -> Config:
    """The config whose monitoring.quality_horizon_hours is the horizon (in data time) on the log's wall clock,
    measured from how long a replayed week took: the log is stamped by the API as the replay runs."""
    wall = (pd.Timestamp(week.wall_end) - pd.Timestamp(week.wall_start)).total_seconds()
    hours = config.monitoring.quality_horizon_hours * wall / WEEK.total_seconds()
    cfg = config.dump()
    cfg["monitoring"]["quality_horizon_hours"] = max(hours, 1.0 / 3600)
    log.info("quality horizon on the log's clock: %.1f s (%.0f h of data time)", hours * 3600,
             config.monitoring.quality_horizon_hours)
    return Config.model_validate(cfg)


def monitor_week(sim: Simulation, week: WeekRecord, reference_dir: Path) -> Path | None:
    """The monitoring pipeline over the week (reports against the live model's training tables, policy, and the
    retrain when it fires); returns the new training-tables folder when a retrain went live.

    Its inputs are what the replay knows: the reference tables, the week and the week before as wall-clock windows
    of the log, sim time as the policy's clock and the snapshots' time; a retrain trains on the tables up to now
    (training tables + logged interactions), written here, so the pipeline ingests nothing else."""
    from monitoring.retraining import run_monitoring

    previous = sim.weeks[-2]
    out = Path(sim.config.monitoring.reports_dir) / f"week_{week.index:02d}"
    now = pd.Timestamp(week.sim_end)
    folder = sim.root / "data" / f"week_{week.index + 1:02d}"
    counts = tables_up_to_now(sim.plan, now, sim.config.serving.request_log, sim.record, folder)
    if sim.monitor_config is None:
        sim.monitor_config = scaled_horizon(sim.config, sim.weeks[0])
    before = deployed_version(sim.config)
    run = run_monitoring(with_data(sim.monitor_config, folder), reference=reference_dir, now=now,
                         snapshot_at=week.sim_end, baseline_start=previous.wall_start,
                         baseline_end=previous.wall_end, current_start=week.wall_start, current_end=week.wall_end)
    shutil.copytree(run.report_dir, out)  # the replay's report folder (its index page links every week)
    week.report_dir, week.signals = str(out), run.summary["signals"]
    week.drifted_columns = [f"{name}.{col}" for name, rep in run.summary["drift"]["reports"].items()
                            for col, c in rep.get("columns", {}).items() if c["drifted"]]
    week.decision = {k: run.decision[k] for k in ("decision_id", "at", "retrain", "reason", "suppressed_by",
                                                  "fired", "outcome")}
    if not run.retrain:
        return None
    return went_live(sim, week, run.decision["outcome"], {"run_dir": run.outcome["run_dir"],
                                                          "artifacts": run.artifacts}, before, counts, folder)
