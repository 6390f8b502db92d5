"""Monitoring runs as snapshots in a local Evidently workspace, for Evidently's own UI (`recsys monitor ui`).

One project per deployment (monitoring.workspace_project, default the data set's name). Each monitoring run adds:
- its Evidently drift reports (one snapshot each, tagged "drift" and the report's name), to open in the UI;
- one "signals" snapshot: the run's signals as one row (drift share, embedding drift AUCs, online hit rate and
  NDCG, the fairness ratio, exposure), each a `MeanValue` metric of that row, so the project's dashboard plots
  the real values over time.
Every snapshot is stamped with the monitoring window's end (a replay passes its own clock), so runs line up on
the dashboard's time axis in the order of the data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Config
from monitoring.drift import DriftResult

log = logging.getLogger(__name__)
SIGNALS_TAG = "signals"
DRIFT_TAG = "drift"
TAB = "Signals over time"


@dataclass(frozen=True)
class Signal:
    """One dashboard series: a column of the signals row and where its value comes from in the summary."""

    column: str
    legend: str
    path: tuple[str, ...]


SIGNALS = (
    Signal("drift_share", "drift share", ("signals", "drift_share")),
    Signal("user_embedding_auc", "users AUC",
           ("drift", "reports", "user_embeddings", "columns", "user_embeddings", "value")),
    Signal("item_embedding_auc", "items AUC",
           ("drift", "reports", "item_embeddings", "columns", "item_embeddings", "value")),
    Signal("hit_rate", "hit rate", ("signals", "hit_rate")),
    Signal("ndcg", "NDCG", ("signals", "ndcg")),
    Signal("fairness_ratio", "fairness ratio", ("signals", "fairness_ratio")),
    Signal("long_tail_share", "long-tail share", ("signals", "long_tail_share")),
    Signal("exposure_gini", "exposure Gini", ("signals", "exposure_gini")),
)
# (title, subtitle, columns) of the dashboard's panels, in order
PANELS = (
    ("Drift share", "drifted features / evaluated features (the retraining signal)", ("drift_share",)),
    ("Embedding drift", "ROC AUC of a classifier telling reference from current user / item vectors (0.5: none)",
     ("user_embedding_auc", "item_embedding_auc")),
    ("Online quality", "hit rate@k and NDCG@k of logged recommendations against the interactions that followed",
     ("hit_rate", "ndcg")),
    ("Fairness", "worst / best group hit rate, lowest over the declared user groups", ("fairness_ratio",)),
    ("Exposure", "long-tail share of recommended items and the Gini of item exposure",
     ("long_tail_share", "exposure_gini")),
)


def workspace_dir(config: Config) -> Path:
    """The workspace folder: monitoring.workspace_dir, else <reports_dir>/workspace."""
    return Path(config.monitoring.workspace_dir or Path(config.monitoring.reports_dir) / "workspace")


def project_name(config: Config) -> str:
    """This deployment's project: monitoring.workspace_project, else the data set's name."""
    return config.monitoring.workspace_project or config.dataset.name


def snapshot_time(value: Any) -> datetime:
    """A naive UTC datetime (Evidently compares snapshot times with naive bounds)."""
    stamp = pd.Timestamp(value)
    return (stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp).to_pydatetime()


def signal_values(summary: dict[str, Any]) -> dict[str, float]:
    """The run's signals that have a value (a skipped report or too few requests leave one out)."""
    out = {}
    for signal in SIGNALS:
        value: Any = summary
        for key in signal.path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and value == value:
            out[signal.column] = float(value)
    return out


def signals_snapshot(values: dict[str, float], at: datetime, metadata: dict[str, str]) -> Any:
    """An Evidently snapshot of one row of signals: a MeanValue metric per signal."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue

    columns = list(values)
    row = pd.DataFrame({c: [values[c]] for c in columns}, dtype="float64")
    data = Dataset.from_pandas(row, data_definition=DataDefinition(numerical_columns=columns))
    return Report([MeanValue(column=c) for c in columns]).run(
        data, None, timestamp=at, tags=[SIGNALS_TAG], metadata=metadata, name=f"signals {at:%Y-%m-%d %H:%M}")


def open_project(workspace: Any, name: str, description: str) -> Any:
    """The project named `name`, created with its dashboard when the workspace lacks it."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    found = workspace.search_project(name)
    if found:
        return found[0]
    project = workspace.create_project(name, description=description)
    legends = {s.column: s.legend for s in SIGNALS}
    for title, subtitle, columns in PANELS:
        metrics = [PanelMetric(legend=legends[c], metric="MeanValue", metric_labels={"column": c},
                               tags=[SIGNALS_TAG]) for c in columns]
        project.dashboard.add_panel(line_plot_panel(title, metrics, description=subtitle, size="half"), tab=TAB)
    return project


def add_run(config: Config, summary: dict[str, Any], drift: list[DriftResult], at: Any) -> dict[str, Any]:
    """Add the run's drift snapshots and its signals snapshot to the deployment's project; returns where."""
    from evidently.ui.workspace import Workspace

    folder = workspace_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    workspace = Workspace(str(folder))
    name = project_name(config)
    project = open_project(workspace, name, f"Monitoring of {name} served from {config.serving.model_repository}")
    stamp = snapshot_time(at)
    metadata = {"window_end": stamp.isoformat(), "model_versions": ",".join(summary.get("model_versions", []))}
    values = signal_values(summary)
    snapshots = [str(workspace.add_run(project.id, signals_snapshot(values, stamp, metadata)).id)] if values else []
    for result in drift:
        if result.snapshot is not None:
            snapshots.append(str(workspace.add_run(project.id, result.snapshot).id))
    log.info("added %d snapshots to Evidently project %r in %s", len(snapshots), name, folder)
    return {"dir": str(folder), "project": name, "project_id": str(project.id), "snapshots": snapshots,
            "timestamp": stamp.isoformat()}
