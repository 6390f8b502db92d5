"""The replay's training and deployment: the first model through the training pipeline, what a pipeline run
did (its gate, the champion, the live Triton version), and waiting until the API serves a new version."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from components.config import Config
from components.schemas import INTERACTIONS, ITEMS, USERS, table_path, write_tables
from monitoring.replay_world import Simulation, SimulationError, WeekRecord

log = logging.getLogger(__name__)


def with_data(config: Config, tables_dir: str | Path) -> Config:
    """The config whose ingest step reads the canonical tables in `tables_dir` (data.source=files)."""
    cfg = config.dump()
    folder = Path(tables_dir).resolve()
    cfg["data"].update(source="files", interactions_path=str(table_path(folder, INTERACTIONS)),
                       users_path=str(table_path(folder, USERS)), items_path=str(table_path(folder, ITEMS)))
    return Config.model_validate(cfg)


def with_gate(config: Config, min_improvement: float) -> Config:
    """The config whose gate asks for `min_improvement` (a negative one lets a weaker candidate through)."""
    cfg = config.dump()
    cfg["evaluate"]["gate_min_improvement"] = min_improvement
    return Config.model_validate(cfg)


def run_training(config: Config) -> dict[str, Any]:
    """The training pipeline with the KFP local runner (pipelines.runner)."""
    from pipelines.runner import run_pipeline
    from pipelines.training import TRAINING

    return run_pipeline(TRAINING, config)


def deployed_version(config: Config) -> dict[str, Any]:
    """The live Triton version and its model version (deployment history of the model repository)."""
    from serving.deploy import read_history

    history = read_history(config.serving.model_repository)
    live = [e for e in history["events"] if e["status"] == "active" and e["version"] == history.get("active")]
    return {"triton_version": history.get("active"),
            "model_version": live[-1]["model_version"] if live else None,
            "deployments": len([e for e in history["events"] if e["status"] == "active"])}


def run_champion(config: Config, result: dict[str, Any]) -> dict[str, Any] | None:
    """The registry champion when the pipeline run's promote step made its model the champion, else None."""
    from components.registry import read_champion

    model_dir = result.get("artifacts", {}).get("train-op", {}).get("model")
    current = read_champion(config.paths.artifacts_dir)
    if model_dir is None or current is None or not current.source_dir:
        return None
    return current.to_dict() if Path(current.source_dir) == Path(model_dir).resolve() else None


def trained_model(result: dict[str, Any]) -> str | None:
    """The model folder the pipeline run's train step wrote."""
    return result.get("artifacts", {}).get("train-op", {}).get("model")


def gate_summary(result: dict[str, Any]) -> dict[str, Any] | None:
    """The run's gate decision in brief: promote?, why, the gate metric of the candidate and of the champion."""
    from components.evaluate import read_decision

    folder = result.get("artifacts", {}).get("evaluate-op", {}).get("decision")
    if folder is None or not (Path(folder) / "decision.json").is_file():
        return None
    d = read_decision(folder)
    metric = d["gate_metric"]
    return {"promote": bool(d["promote"]), "reason": d["reason"], "metric": metric,
            "min_improvement": d["min_improvement"], "candidate": d["candidate"]["metrics"].get(metric),
            "champion_name": d["champion"].get("name") or d["champion"].get("key"),
            "champion_source": d["champion"].get("source", "registry"),
            "champion": (d["champion"].get("metrics") or {}).get(metric), "difference": d.get("difference")}


def wait_for_api_version(client: Any, version: int, timeout_s: float = 60.0) -> None:
    """Block until Triton serves `version` and the API's watcher (1 s period) had time to load it."""
    from serving.service import HEALTH_INTERVAL_S

    deadline = time.monotonic() + timeout_s
    while client.active_version() != version:
        if time.monotonic() > deadline:
            raise SimulationError(f"Triton did not switch to version {version} within {timeout_s:.0f} s")
        time.sleep(0.2)
    time.sleep(2.5 * HEALTH_INTERVAL_S)


def train_initial(sim: Simulation) -> dict[str, Any]:
    folder = sim.root / "data" / "week_00"
    write_tables(sim.plan.train_tables, folder)
    # the first model passes the same gate as any later one: before it, the strongest baseline holds the title
    config = with_data(sim.config, folder)
    log.info("training the first model on %d early-period interactions (until %s)",
             len(sim.plan.train_tables[INTERACTIONS]), sim.plan.train_end)
    result = run_training(config)
    gate = gate_summary(result)
    served_despite_gate = False
    if deployed_version(sim.config)["triton_version"] is None and gate is not None and not gate["promote"]:
        # the API serves two-tower bundles only: the loop needs one, so the gate is opened and the summary says so
        log.warning("the first model lost the gate (%s); it is served anyway: the API serves two-tower bundles "
                    "only", gate["reason"])
        served_despite_gate = True
        result = run_training(with_gate(config, -1.0))
    champion = run_champion(config, result)
    live = deployed_version(sim.config)
    if live["triton_version"] is None:
        raise SimulationError(f"the first training pipeline deployed nothing; see {result.get('run_dir')}")
    sim.pipelines.append({"kind": "initial", "run_dir": result["run_dir"], "seconds": result["seconds"],
                          "model_dir": trained_model(result), "gate": gate,
                          "served_despite_gate": served_despite_gate, "champion": champion, **live})
    return result


def went_live(sim: Simulation, week: WeekRecord, outcome: dict[str, Any], result: dict[str, Any],
              before: dict[str, Any], counts: dict[str, int], folder: Path) -> Path | None:
    """Record the retrain of `week` (its gate, the champion, the live version); `folder` when its model went live
    and the API serves it, else None."""
    from serving.triton_client import RecommenderClient

    champion = run_champion(sim.config, result)
    after = deployed_version(sim.config)
    promoted = after["triton_version"] != before["triton_version"]
    week.retrain = {"training_rows": counts, "outcome": outcome, "champion": champion, "promoted": promoted,
                    **after}
    sim.pipelines.append({"kind": "retrain", "week": week.index, "run_dir": outcome.get("run_dir"),
                          "seconds": outcome.get("seconds"), "status": outcome.get("status"),
                          "model_dir": trained_model(result), "gate": gate_summary(result), "champion": champion,
                          "promoted": promoted, **after})
    if not promoted:
        log.warning("the retrained model did not go live (%s)", outcome)
        return None
    s = sim.config.serving
    with RecommenderClient(f"{s.host}:{s.triton_grpc_port}", timeout_s=s.grpc_timeout_s) as triton:
        wait_for_api_version(triton, int(after["triton_version"]))
    return folder
