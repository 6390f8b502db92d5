"""What monitoring compares: the training reference window, and baseline/current windows of the request log.

Every window is explicit (start inclusive, end exclusive, UTC) so that callers such as a replay simulation can
ask for exactly the period they mean; `resolve_windows` fills in defaults from the log and the config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Config
from components.errors import RecsysError
from components.id_maps import ExternalIds, load_id_maps
from components.request_log import RequestLog, is_postgres_url
from components.request_logs import open_request_log
from components.schemas import ID_MAPS, INTERACTIONS, ITEMS, USERS, table_path

log = logging.getLogger(__name__)

Stamp = pd.Timestamp | str | None


class MonitoringError(RecsysError, ValueError):
    """Monitoring inputs are missing or do not fit together; the message says which."""


def _stamp(value: Stamp) -> pd.Timestamp | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass(frozen=True)
class Window:
    """A half-open time window [start, end); None = unbounded."""

    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None

    @classmethod
    def of(cls, start: Stamp = None, end: Stamp = None) -> Window:
        window = cls(_stamp(start), _stamp(end))
        if window.start is not None and window.end is not None and window.start >= window.end:
            raise MonitoringError(f"window start {window.start} is not before its end {window.end}")
        return window

    def mask(self, ts: pd.Series) -> pd.Series:
        keep = pd.Series(True, index=ts.index)
        if self.start is not None:
            keep &= ts >= self.start
        if self.end is not None:
            keep &= ts < self.end
        return keep

    @property
    def hours(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return (self.end - self.start).total_seconds() / 3600.0

    def as_dict(self) -> dict[str, str | None]:
        return {"start": None if self.start is None else self.start.isoformat(),
                "end": None if self.end is None else self.end.isoformat()}


@dataclass(frozen=True)
class Windows:
    reference: Window  # canonical (training) interactions
    baseline: Window  # request log: the period before `current` (prediction drift, quality baseline)
    current: Window  # request log: the period under watch

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).as_dict() for name in ("reference", "baseline", "current")}


@dataclass
class MonitoringData:
    """Everything one monitoring run reads, already cut to its windows."""

    windows: Windows
    reference_interactions: pd.DataFrame  # canonical shape: the training split inside the reference window
    reference_window: pd.DataFrame  # every canonical interaction inside the reference window (for activity)
    users: pd.DataFrame
    items: pd.DataFrame
    current_requests: pd.DataFrame  # RequestLog.requests_frame shape
    current_recommendations: pd.DataFrame  # RequestLog.recommendations_frame shape
    baseline_requests: pd.DataFrame
    baseline_recommendations: pd.DataFrame
    current_interactions: pd.DataFrame  # logged interactions inside the current window
    outcome_interactions: pd.DataFrame  # logged interactions from the baseline start on (request outcomes)
    item_embeddings: tuple[np.ndarray, np.ndarray] | None  # (item_ids, vectors) of the champion, if any
    current_interaction_users: pd.Series | None = None  # the log's external user ids of current_interactions' rows


def resolve_windows(config: Config, log_: RequestLog, *, reference_start: Stamp = None, reference_end: Stamp = None,
                    baseline_start: Stamp = None, baseline_end: Stamp = None, current_start: Stamp = None,
                    current_end: Stamp = None) -> Windows:
    """Windows from explicit bounds; missing ones default to: current = the last `monitoring.window_hours`
    before the latest log entry, baseline = the equally long window before it, reference = everything before
    the baseline (the training split is applied by the loader)."""
    requests = log_.requests_frame()
    if requests.empty:
        raise MonitoringError(f"request log {log_.path} holds no requests; nothing to monitor")
    span = pd.Timedelta(hours=config.monitoring.window_hours)
    interactions = log_.interactions_frame()
    latest = requests["ts"].max()
    if not interactions.empty:
        latest = max(latest, interactions["event_timestamp"].max())
    cur_end = _stamp(current_end) or latest + pd.Timedelta(microseconds=1)
    cur_start = _stamp(current_start) or cur_end - span
    base_end = _stamp(baseline_end) or cur_start
    base_start = _stamp(baseline_start) or base_end - (cur_end - cur_start)
    ref_end = _stamp(reference_end) or base_start
    return Windows(reference=Window.of(reference_start, ref_end), baseline=Window.of(base_start, base_end),
                   current=Window.of(cur_start, cur_end))


def reference_interactions(config: Config, interactions: pd.DataFrame, window: Window) -> pd.DataFrame:
    """The training rows (contract C2 train split) inside the reference window."""
    from components.splits import configured_split

    rows = interactions[window.mask(interactions["event_timestamp"])]
    if rows.empty:
        raise MonitoringError(f"no canonical interactions in the reference window {window.as_dict()}")
    try:
        rows = configured_split(rows, config).train
    except RecsysError as err:  # too little data for a split: the window itself is the reference
        log.warning("reference window kept whole (no training split possible: %s)", err)
    return rows.reset_index(drop=True)


def champion_embeddings(config: Config) -> tuple[np.ndarray, np.ndarray] | None:
    """(item_ids, item_embeddings) of the champion model (registry champion.json, contract C4), or None."""
    path = Path(config.paths.artifacts_dir) / "registry" / "champion.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    model_dir = next((record[k] for k in ("model_dir", "model_path", "path") if record.get(k)), None)
    return load_embeddings(model_dir) if model_dir else None


def load_embeddings(model_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """item_ids.npy + item_embeddings.npy from a model directory or serving bundle; None if absent."""
    folder = Path(model_dir)
    ids, vectors = folder / "item_ids.npy", folder / "item_embeddings.npy"
    if not (ids.exists() and vectors.exists()):
        log.warning("no item embeddings in %s; embedding drift is skipped", folder)
        return None
    item_ids, matrix = np.load(ids), np.load(vectors)
    if len(item_ids) != len(matrix):
        raise MonitoringError(f"{folder}: {len(item_ids)} item ids but {len(matrix)} embedding rows")
    return item_ids.astype(np.int64), matrix.astype(np.float32)


def log_id_translators(config: Config, reference_dir: str | Path) -> tuple[ExternalIds, ExternalIds]:
    """The id maps that turn the log's external ids into the canonical tables' keys: the committed maps
    (the latest key space), else the reference data set's own."""
    from components.ingest import id_maps_dir

    types = {"user": config.dataset.user_id.type, "item": config.dataset.item_id.type}
    folder = id_maps_dir(config)
    if not (folder / "manifest.json").exists():
        folder = Path(reference_dir) / ID_MAPS
    maps = load_id_maps(folder, types)
    return ExternalIds(maps["user"]), ExternalIds(maps["item"])


def keyed(frame: pd.DataFrame, users: ExternalIds, items: ExternalIds) -> pd.DataFrame:
    """A log frame with its external user_id / item_id replaced by keys (-1 for ids the maps lack)."""
    out = frame.copy()
    for column, ids in (("user_id", users), ("item_id", items)):
        if column in out.columns:
            out[column] = ids.keys(out[column]) if len(out) else out[column].astype("int64")
    return out


def load_monitoring_data(config: Config, reference_dir: str | Path, log_path: str | Path,
                         windows: Windows | None = None, embeddings_dir: str | Path | None = None,
                         **bounds: Stamp) -> MonitoringData:
    """Read the canonical tables and the request log, cut to the windows (see `resolve_windows`)."""
    for table in (INTERACTIONS, USERS, ITEMS):
        if not table_path(reference_dir, table).exists():
            raise MonitoringError(f"canonical table '{table}' missing in {reference_dir}")
    if not is_postgres_url(log_path) and not Path(log_path).exists():
        raise MonitoringError(f"request log {log_path} does not exist")
    log_ = open_request_log(log_path)
    try:
        windows = windows or resolve_windows(config, log_, **bounds)
        w = windows
        canonical = pd.read_parquet(table_path(reference_dir, INTERACTIONS))
        ref = reference_interactions(config, canonical, w.reference)
        users_ids, item_ids = log_id_translators(config, reference_dir)

        def log_frame(frame: pd.DataFrame) -> pd.DataFrame:
            return keyed(frame, users_ids, item_ids)

        raw = log_.interactions_frame(since=w.baseline.start)
        logged = log_frame(raw)
        data = MonitoringData(
            windows=w, reference_interactions=ref,
            reference_window=canonical[w.reference.mask(canonical["event_timestamp"])].reset_index(drop=True),
            users=pd.read_parquet(table_path(reference_dir, USERS)),
            items=pd.read_parquet(table_path(reference_dir, ITEMS)),
            current_requests=log_frame(log_.requests_frame(w.current.start, w.current.end)),
            current_recommendations=log_frame(log_.recommendations_frame(w.current.start, w.current.end)),
            baseline_requests=log_frame(log_.requests_frame(w.baseline.start, w.baseline.end)),
            baseline_recommendations=log_frame(log_.recommendations_frame(w.baseline.start, w.baseline.end)),
            current_interactions=logged[w.current.mask(logged["event_timestamp"])].reset_index(drop=True),
            current_interaction_users=raw.loc[w.current.mask(raw["event_timestamp"]).to_numpy(),
                                              "user_id"].reset_index(drop=True),
            outcome_interactions=logged,
            item_embeddings=load_embeddings(embeddings_dir) if embeddings_dir else champion_embeddings(config),
        )
    finally:
        log_.close()
    log.info("monitoring windows %s: %d reference interactions, %d/%d baseline/current requests, "
             "%d current interactions", w.as_dict(), len(data.reference_interactions), len(data.baseline_requests),
             len(data.current_requests), len(data.current_interactions))
    return data
