"""The closed loop, replayed: the data set in time order through the real API, monitoring, retraining, redeploy.

1. Train on the early period: its canonical tables are written to a folder and the training pipeline runs
   with data.source=files (ingest -> ... -> deploy to Triton); the BentoML API starts in front of it.
2. Serve the following weeks: for sampled events in time order, POST /recommend for the user, then POST
   /interactions with the real event (every request lands in the durable request log).
3. A shift: a cohort of users held out so far (the data set's declared `replay_cohort`, e.g. every user under
   30) and a batch of items never seen in training (the shifted weeks' most wanted items, held back until then;
   their text is in the items table) arrive together.
4. After every replayed week, the monitoring pipeline runs in the KFP local runner, as on the cluster
   (monitoring.retraining): reports over that week of the log (baseline: the week before) against the live
   model's training tables, then the retraining policy; a retrain is its nested training pipeline on the data up
   to now (training tables + logged interactions), whose gate and deploy step put a new Triton version live; the
   API picks it up.
5. Online quality (hit rate / NDCG of the logged recommendations against the interactions that followed) per
   week, a timeline plot, an index page linking every monitoring report, and summary.json.
6. A counterfactual: the previous champion ranks the post-retrain requests in-process as a shadow (same users,
   same interactions before each request, batch `recommend` path), scored against the same later interactions;
   the retrain's gain over it comes with a paired bootstrap CI over requests.
Every monitoring run also lands in the Evidently workspace under <out>/monitoring/workspace (`recsys monitor ui`).
The first model passes the same gate as any other (the strongest baseline holds the title before it).

The log is stamped with the wall clock (the API stamps requests itself), so the replay keeps a map from each
logged request and interaction to its time in the data ("sim time"): monitoring windows are the wall-clock
spans of replayed weeks, the policy's clock is sim time, and the quality timeline is computed in sim time.

This module runs the loop; its parts: monitoring.replay_world (settings, plan, run state), replay_traffic (the
requests sent through the API), replay_retrain (training and deployment), replay_monitoring (the weekly
monitoring pipeline), replay_report (quality, counterfactual, timeline, index page, summary.json).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Config, absolute_paths
from components.processes import free_port, stop_process
from components.schemas import USERS, read_tables
from monitoring.replay_monitoring import monitor_week
from monitoring.replay_report import finish
from monitoring.replay_retrain import train_initial
from monitoring.replay_traffic import ApiClient, replay_week, user_profiles
from monitoring.replay_world import SimSettings, Simulation, SimulationError, plan_replay, with_declared_cohort

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SIMULATION_MARKERS = ("summary.json", "request_log.sqlite", "policy", "kfp")


def simulation_config(base: Config, root: str | Path, settings: SimSettings) -> Config:
    """`base` with every artifact, store and log under `root`, free loopback ports, and the policy cooldown."""
    root = Path(root).resolve()
    cfg = absolute_paths(base, PROJECT_ROOT).dump()
    cfg["paths"].update(artifacts_dir=str(root / "artifacts"), pipeline_root=str(root / "kfp"))
    cfg["features"]["data_dir"] = str(root / "features")
    cfg["serving"].update(
        host="127.0.0.1", triton_http_port=free_port(), triton_grpc_port=free_port(), triton_metrics_port=free_port(),
        api_port=free_port(), model_repository=str(root / "triton_models"),
        request_log=str(root / "request_log.sqlite"),
        triton_build_dir=str(root / "build" / "triton"), triton_log_file=str(root / "build" / "triton" / "server.log"),
        top_k=settings.k)
    cfg["monitoring"].update(reports_dir=str(root / "monitoring"), state_path=str(root / "policy" / "state.json"),
                             cooldown_hours=settings.cooldown_weeks * 7 * 24, quality_k=settings.k,
                             window_hours=7 * 24)
    cfg["kfp"]["host"] = None  # the retrain runs here with the KFP local runner
    # A retrain must learn every item the log has seen: the newest items are exactly the ones the shift brings,
    # so none is held out of training for the cold-start report (that report is the offline evaluation's job).
    cfg["evaluate"].update(cold_start_items=0)
    return Config.model_validate(cfg)


def _import_parts() -> None:
    """Import every part of the loop up front (one consistent code base for the whole run)."""
    import components.evaluate  # noqa: F401
    import components.registry  # noqa: F401
    import monitoring.quality  # noqa: F401
    import monitoring.reports  # noqa: F401
    import monitoring.retraining  # noqa: F401
    import pipelines.runner  # noqa: F401
    import pipelines.training  # noqa: F401
    import serving.api_server  # noqa: F401
    import serving.deploy  # noqa: F401
    import serving.service  # noqa: F401
    import serving.triton_client  # noqa: F401
    import serving.triton_server  # noqa: F401


def _start_serving(sim: Simulation) -> ApiClient:
    from serving.api_server import api_url, auth_headers, start_api

    sim.api_pid = start_api(sim.config, detach=False)
    return ApiClient(api_url(sim.config), auth_headers(sim.config))


def _stop_serving(sim: Simulation) -> None:
    from serving import triton_server as ts

    if sim.api_pid is not None:
        stop_process(sim.api_pid)
        sim.api_pid = None
    ts.stop_detached(ts.settings_from_config(sim.config))


def fresh_root(root: str | Path) -> Path:
    """An empty output folder: a previous simulation's folder is cleared (its policy state, log and stores
    would leak into this run); any other non-empty folder is refused."""
    root = Path(root).resolve()
    if root.exists() and any(root.iterdir()):
        if not any((root / marker).exists() for marker in SIMULATION_MARKERS):
            raise SimulationError(f"{root} is not empty and holds no previous simulation: choose another --out")
        log.info("clearing the previous simulation in %s", root)
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def run_simulation(base: Config, root: str | Path, settings: SimSettings, tables_dir: str | Path,
                   progress: bool = True) -> dict[str, Any]:
    """The whole replay (see the module docstring); writes index.html, timeline.png and summary.json to `root`
    and returns the summary. Every server it starts is stopped before it returns."""
    started = time.monotonic()
    settings = with_declared_cohort(settings, base.dataset)
    root = fresh_root(root)
    config = simulation_config(base, root, settings)
    plan = plan_replay(read_tables(tables_dir), settings)
    sim = Simulation(config, settings, root, plan)
    _import_parts()
    log.info("replay plan: train until %s, %d normal + %d shifted weeks (%d events), cohort %s (%d users), "
             "%d new items", plan.train_end, settings.serve_weeks, settings.shift_weeks,
             sum(len(w) for w in plan.weeks), settings.cohort, len(plan.cohort_users), len(plan.new_items))
    profiles = user_profiles(plan.train_tables[USERS], config.dataset)
    reference = root / "data" / "week_00"
    retrain_live_at: pd.Timestamp | None = None
    try:
        train_initial(sim)
        client = _start_serving(sim)
        try:
            for i in range(len(plan.weeks)):
                week = replay_week(sim, client, i, profiles, progress)
                sim.weeks.append(week)
                if i == 0:
                    continue
                new_reference = monitor_week(sim, week, reference)
                if new_reference is not None:
                    reference = new_reference
                    retrain_live_at = retrain_live_at or pd.Timestamp(week.sim_end)  # the first retrain splits pre/post
                log.info("week %d (%s): %d events, models %s, drift share %s, decision: %s", i, week.phase,
                         week.events, week.model_versions, week.signals.get("drift_share"),
                         (week.decision or {}).get("reason"))
        finally:
            client.close()
    finally:
        _stop_serving(sim)
    return finish(sim, retrain_live_at, time.monotonic() - started)
