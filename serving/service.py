"""The recommendation API (BentoML): Feast online features -> one Triton gRPC call -> items with metadata.

Request path: one Feast look-up (the `serving` feature service), one call of Triton's `recommender`
ensemble, numpy for filters and explanations, one committed append to the request log (contract C6).
When Triton or Feast fail, a popularity ranking answers with `degraded: true`; a circuit breaker skips the
failed part and a watcher thread re-checks it (fresh gRPC channel, fresh store) so the API recovers
without a restart. Only an outage trips a breaker: an error about one request's values degrades that request
alone. The API stays ready while it can answer from its fallback. Every request passes serving/http_guard.py
first (headers, body size, deadline, bounded error bodies). The config comes from $RECSYS_CONFIG (see
recsys/serve_api.py, which starts it).
"""

import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from components.config import Config, load_config
from components.dataset import DatasetSchema
from components.errors import RecsysError
from components.features import feature_data_dir, online_feature_rows, open_store, push_interaction
from components.id_maps import ExternalIds, load_id_maps
from components.ingest import id_maps_dir
from components.request_log import RequestLog, RequestRecord
from serving import triton_repo as tr
from serving.api_models import ApiModels, FiltersBase, RequestLimits, api_models, display_value
from serving.auth import BearerAuth, caller_of, may_read_history
from serving.http_guard import JSON_ROUTES, RequestGuard
from serving.triton_client import RecommenderClient, TritonClientError, encode_profile

log = logging.getLogger("recsys.api")

HEALTH_INTERVAL_S = 1.0  # watcher period: version check and re-check of failed parts
FEAST_TIMEOUT_S = 1.0  # a feature look-up or push without an answer by then counts as a failure
OVERFETCH_SLACK = 1.5  # filtered requests fetch k / selectivity * this (capped at the catalogue)
POPULARITY_VERSION = "popularity"
STAGES = ("feast", "triton", "log")

REQUESTS = bentoml.metrics.Counter(
    name="recsys_api_requests_total", documentation="API requests by endpoint and outcome",
    labelnames=["endpoint", "outcome"])
LATENCY = bentoml.metrics.Histogram(
    name="recsys_api_latency_seconds", documentation="Handler latency by endpoint", labelnames=["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
STAGE_LATENCY = bentoml.metrics.Histogram(
    name="recsys_api_stage_seconds", documentation="Time per stage of /recommend (feast, triton, log)",
    labelnames=["stage"], buckets=(0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.05, 0.1, 0.5))
FALLBACKS = bentoml.metrics.Counter(
    name="recsys_api_fallbacks_total", documentation="Responses not ranked by the model, by reason",
    labelnames=["reason"])


class ServiceError(RecsysError):
    """The API cannot start or serve; the message says which file or part."""


# ------------------------------------------------------------------------------------------------ catalogue
class Catalogue:
    """Item titles, the declared displayed and filterable attributes, and a popularity ranking, as numpy arrays."""

    def __init__(self, metadata: pd.DataFrame, popularity: np.ndarray, schema: DatasetSchema) -> None:
        """`metadata` sorted by item_id with title and the declared attributes; `popularity` aligned with it."""
        if not metadata["item_id"].is_monotonic_increasing:
            raise ServiceError("item metadata must be sorted by item_id")
        self.schema = schema
        self.item_ids = metadata["item_id"].to_numpy(np.int64)
        self.titles = metadata["title"].astype(str).tolist() if "title" in metadata else [None] * len(metadata)
        self.numbers: dict[str, np.ndarray] = {}  # range filters
        self.value_masks: dict[str, dict[str, np.ndarray]] = {}  # membership filters: value (lower case) -> rows
        for name, kind in schema.filterable.items():
            column = metadata[name] if name in metadata else pd.Series([None] * len(metadata))
            if kind == "range":
                self.numbers[name] = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
                continue
            masks: dict[str, np.ndarray] = {}
            for row, cell in enumerate(column):
                for value in _values(cell):
                    masks.setdefault(value.lower(), np.zeros(len(self.item_ids), bool))[row] = True
            self.value_masks[name] = masks
        self.shown = {name: [display_value(schema.item_attributes[name], v)
                             for v in (metadata[name] if name in metadata else [None] * len(metadata))]
                      for name in schema.displayed}
        self.popularity = np.asarray(popularity, np.float64)
        self.popular_rows = np.argsort(-self.popularity, kind="stable")

    @classmethod
    def from_feature_dir(cls, folder: str | Path, schema: DatasetSchema) -> "Catalogue":
        """Read item_metadata.parquet and item_popularity.parquet written by the features step."""
        folder = Path(folder)
        try:
            present = set(pq.read_schema(folder / "item_metadata.parquet").names)
            wanted = ["item_id", "title", *schema.filterable, *schema.displayed]
            meta = pd.read_parquet(folder / "item_metadata.parquet",
                                   columns=[c for c in dict.fromkeys(wanted) if c in present])
            meta = meta.sort_values("item_id").reset_index(drop=True)
            pop = pd.read_parquet(folder / "item_popularity.parquet")
            activity_ts = pd.read_parquet(folder / "user_activity.parquet", columns=["event_timestamp"])
        except (OSError, ValueError) as err:
            raise ServiceError(f"cannot read the item tables in {folder} (run `recsys features` first): {err}") from err
        return cls(meta, popularity_scores(meta["item_id"].to_numpy(np.int64), pop,
                                           activity_ts["event_timestamp"].max()), schema)

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Catalogue row of each item key, -1 for keys without metadata."""
        ids = np.asarray(item_ids, np.int64)
        pos = np.searchsorted(self.item_ids, ids).clip(0, max(len(self.item_ids) - 1, 0))
        found = (self.item_ids[pos] == ids) if len(self.item_ids) else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)

    def mask(self, filters: FiltersBase | None) -> np.ndarray | None:
        """Rows that pass the filters (None when no filter is set)."""
        if filters is None or not filters.active():
            return None
        keep = np.ones(len(self.item_ids), bool)
        for name, accepted in filters.memberships().items():
            any_value = np.zeros(len(self.item_ids), bool)
            for value in accepted:
                found = self.value_masks[name].get(value.lower())
                if found is not None:
                    any_value |= found
            keep &= any_value
        with np.errstate(invalid="ignore"):
            for name, (low, high) in filters.ranges().items():
                if low is not None:
                    keep &= self.numbers[name] >= low
                if high is not None:
                    keep &= self.numbers[name] <= high
        return keep

    def popular(self, k: int, exclude: set[int], mask: np.ndarray | None) -> list[tuple[int, float]]:
        """The k most popular items that pass the mask and are not excluded."""
        out = []
        for row in self.popular_rows:
            if mask is not None and not mask[row]:
                continue
            item = int(self.item_ids[row])
            if item in exclude:
                continue
            out.append((item, float(self.popularity[row])))
            if len(out) == k:
                break
        return out

    def title(self, item_id: int) -> str | None:
        row = int(self.rows(np.array([item_id]))[0])
        return None if row < 0 else self.titles[row]

    def describe(self, item_id: int) -> dict[str, Any]:
        """Title and displayed attributes of an item key (empty values for keys without metadata)."""
        row = int(self.rows(np.array([item_id]))[0])
        shown = {name: (values[row] if row >= 0 else display_value(self.schema.item_attributes[name], None))
                 for name, values in self.shown.items()}
        return {"title": self.titles[row] if row >= 0 else None, **shown}


def _values(cell: Any) -> list[str]:
    """The values of a categorical or multi-valued cell."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    if isinstance(cell, str):
        return [cell]
    return [str(v) for v in cell]


def popularity_scores(item_ids: np.ndarray, table: pd.DataFrame, as_of: Any) -> np.ndarray:
    """Events per item in the longest popularity window before the data's last event (as_of), ties broken
    by the item's peak count in that window; items without rows score 0."""
    windows = sorted((int(c[len("item_popularity_"):-1]), c) for c in table.columns
                     if c.startswith("item_popularity_") and c.endswith("d"))
    if not windows:
        raise ServiceError("item_popularity.parquet has no item_popularity_<days>d column")
    column = windows[-1][1]
    ordered = table.sort_values(["item_id", "event_timestamp"], kind="stable")
    current = ordered[ordered["event_timestamp"] <= as_of].groupby("item_id")[column].last()
    peak = ordered.groupby("item_id")[column].max()
    top = float(peak.max()) if len(peak) else 0.0
    score = current.reindex(item_ids).fillna(0).to_numpy(np.float64)
    return score + peak.reindex(item_ids).fillna(0).to_numpy(np.float64) / (top + 1.0)


# ------------------------------------------------------------------------------------------- model state
@dataclass(frozen=True)
class ModelState:
    """What the API needs of the deployed version: manifest, catalogue order, normalised item embeddings."""

    version: int
    model_version: str
    manifest: dict[str, Any]
    sorted_ids: np.ndarray
    sorted_rows: np.ndarray
    unit_embeddings: np.ndarray

    @classmethod
    def load(cls, repo_dir: str | Path, version: int) -> "ModelState":
        bundle = tr.version_bundle(repo_dir, version)
        folder = Path(repo_dir) / tr.TOPK / str(version)
        ids = np.load(folder / "item_ids.npy")
        emb = np.load(folder / "item_embeddings.npy").astype(np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        order = np.argsort(ids, kind="stable")
        return cls(version, str(bundle.manifest["model_version"]), bundle.manifest, ids[order], order,
                   emb / np.maximum(norms, 1e-12))

    @property
    def n_items(self) -> int:
        return len(self.sorted_ids)

    def rows(self, item_ids: list[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(item_ids, np.int64)
        if not len(ids):
            return np.zeros(0, np.int64)
        pos = np.searchsorted(self.sorted_ids, ids).clip(0, self.n_items - 1)
        return np.where(self.sorted_ids[pos] == ids, self.sorted_rows[pos], -1)

    def closest(self, items: list[int], recent: list[int]) -> list[tuple[int | None, float]]:
        """For each item, the recent item with the most similar embedding (cosine) and the similarity."""
        recent_rows = self.rows(recent)
        keep = recent_rows >= 0
        if not keep.any():
            return [(None, 0.0)] * len(items)
        recent_ids = np.asarray(recent, np.int64)[keep]
        item_rows = self.rows(items)
        sims = self.unit_embeddings[np.maximum(item_rows, 0)] @ self.unit_embeddings[recent_rows[keep]].T
        best = sims.argmax(axis=1)
        return [(int(recent_ids[j]), float(sims[i, j])) if item_rows[i] >= 0 else (None, 0.0)
                for i, j in enumerate(best)]


@dataclass(frozen=True)
class Live:
    """Everything a request reads that changes with the deployed version: the model state, the item catalogue
    and the id maps. Immutable: a request takes it once (`Engine.live`) and uses it to the end; a version
    change builds a new one and replaces the reference in one assignment."""

    model: ModelState | None
    catalogue: Catalogue
    users: ExternalIds
    items: ExternalIds


class Breaker:
    """Up/down state of one dependency: requests skip it while it is down; the watcher re-checks it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.error = ""

    def ok(self) -> None:
        if not self.up:
            log.info("%s is back", self.name)
        self.up, self.error = True, ""

    def fail(self, err: BaseException | str) -> None:
        if self.up:
            log.warning("%s unavailable: %s", self.name, err)
        self.up, self.error = False, (str(err) or type(err).__name__)[:300]


class WritableCheck:
    """Whether the request log takes writes (an empty committed transaction), checked at most once per interval
    so that a stream of probes costs the log nothing."""

    def __init__(self, request_log: RequestLog, interval_s: float = HEALTH_INTERVAL_S) -> None:
        self.request_log, self.interval_s = request_log, interval_s
        self.error = ""
        self._checked_at = -math.inf
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            if time.monotonic() - self._checked_at >= self.interval_s:
                try:
                    self.request_log.check_writable()
                    self.error = ""
                except Exception as err:  # noqa: BLE001 - any failure means "not writable"; the reason is kept
                    self.error = (str(err) or type(err).__name__)[:300]
                self._checked_at = time.monotonic()
            return not self.error


OUTAGE_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "NOT_FOUND"})
REQUEST_ERRORS = (ValueError, TypeError, KeyError, IndexError, ArithmeticError)  # a value of one request refused


def dependency_down(err: BaseException) -> bool:
    """Whether a failed Triton or Feast call means the dependency is unavailable for everyone (unreachable,
    timed out, overloaded, model not loaded) rather than that this one request's values were refused (e.g.
    INVALID_ARGUMENT, a ValueError): only the first trips its breaker."""
    if isinstance(err, TritonClientError):
        return err.status.removeprefix("StatusCode.") in OUTAGE_STATUSES
    return not isinstance(err, REQUEST_ERRORS)


# ------------------------------------------------------------------------------------------------ engine
class Engine:
    """The API's logic without HTTP: usable in-process (tests, benchmarks) and inside the BentoML service."""

    def __init__(self, config: Config, watch: bool = True) -> None:
        self.config = config
        s = config.serving
        self.repo_dir = Path(s.model_repository)
        self.grpc_url = f"{s.host}:{s.triton_grpc_port}"
        self.schema = config.dataset
        self.models: ApiModels = api_models(self.schema, RequestLimits.from_serving(s))
        self.live = Live(None, Catalogue.from_feature_dir(feature_data_dir(config), self.schema), *self._load_ids())
        self.request_log = RequestLog(s.request_log)
        self.log_writable = WritableCheck(self.request_log)
        self.feast = Breaker("feature store")
        self.triton = Breaker(f"Triton at {self.grpc_url}")
        # one thread talks to Feast: look-ups and pushes are serialised and each waits at most FEAST_TIMEOUT_S
        # (a Redis client that retries for seconds must not stall the API)
        self._feast_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-feast")
        self._store = None
        try:
            self._store = open_store(config)  # first open imports Feast: no deadline here
        except Exception as err:  # noqa: BLE001 - the watcher retries
            self.feast.fail(err)
        self._client = self._new_client()
        self._watch_client = self._new_client()
        self._retired: list[RecommenderClient] = []
        self._stop = threading.Event()
        self._check_lock = threading.Lock()
        self.check_feast()
        self.check_triton()
        self._watcher = None
        if watch:
            self._watcher = threading.Thread(target=self._watch, name="recsys-api-health", daemon=True)
            self._watcher.start()

    # ---- dependencies --------------------------------------------------------------------------------
    def _new_client(self) -> RecommenderClient:
        s = self.config.serving
        return RecommenderClient(self.grpc_url, timeout_s=s.grpc_timeout_s, retries=s.grpc_retries)

    def _reconnect(self) -> None:
        """Fresh gRPC channels (an old channel may sit in a long reconnect back-off); old ones closed later."""
        for old in self._retired:
            old.close()
        self._retired = [self._client, self._watch_client]
        self._client, self._watch_client = self._new_client(), self._new_client()

    def check_triton(self) -> bool:
        """Server ready and the ensemble loaded; (re)loads the model state when the live version changed."""
        with self._check_lock:  # the watcher and /readyz may check at the same time
            return self._check_triton()

    @property
    def model(self) -> ModelState | None:
        """The model state of the version the API serves now (a request reads `live` once instead)."""
        return self.live.model

    def _check_triton(self) -> bool:
        try:
            versions = self._watch_client.served_versions() if self._watch_client.server_ready() else []
            if not versions:
                raise ServiceError(f"Triton at {self.grpc_url} is not ready or has no '{tr.ENSEMBLE}' loaded")
            live = self.live
            # during a switch Triton serves both versions: the API keeps its own until Triton drops it
            keep = live.model is not None and live.model.version in versions
            version = live.model.version if keep else versions[-1]
            if live.model is None or live.model.version != version:
                model = ModelState.load(self.repo_dir, version)
                # a new version: the pipeline that built it refreshed the item metadata (new items included)
                tables = (self._read_catalogue(live) if live.model is not None
                          else (live.catalogue, live.users, live.items))
                self.live = Live(model, *tables)  # one assignment: a request sees the old state or the new
                log.info("serving version %d (model %s)", version, model.model_version)
            self.triton.ok()
            return True
        except Exception as err:  # noqa: BLE001 - any failure means "down"; the breaker keeps the reason
            self.triton.fail(err)
            self._reconnect()
            return False

    def _load_ids(self) -> tuple[ExternalIds, ExternalIds]:
        """The committed id maps (the ones validate extended): external ids of requests <-> keys."""
        folder = id_maps_dir(self.config)
        try:
            maps = load_id_maps(folder, {"user": self.schema.user_id.type, "item": self.schema.item_id.type})
        except (OSError, ValueError) as err:
            raise ServiceError(f"cannot read the id maps in {folder}: {err}") from err
        return ExternalIds(maps["user"]), ExternalIds(maps["item"])

    def _read_catalogue(self, live: Live) -> tuple[Catalogue, ExternalIds, ExternalIds]:
        """The item catalogue and id maps read afresh (those of `live` when they cannot be read)."""
        try:
            users, items = self._load_ids()
            catalogue = Catalogue.from_feature_dir(feature_data_dir(self.config), self.schema)
            log.info("item catalogue reloaded: %d items", len(catalogue.item_ids))
            return catalogue, users, items
        except Exception as err:  # noqa: BLE001 - keep serving with the catalogue it has
            log.warning("item catalogue not reloaded, keeping %d items: %s", len(live.catalogue.item_ids), err)
            return live.catalogue, live.users, live.items

    def _feast(self, fn: Any, *args: Any) -> Any:
        """fn(store, *args) on the Feast thread, opening the store if needed; TimeoutError after FEAST_TIMEOUT_S."""

        def run() -> Any:
            if self._store is None:
                self._store = open_store(self.config)
            return fn(self._store, *args)

        try:
            return self._feast_pool.submit(run).result(timeout=FEAST_TIMEOUT_S)
        except FutureTimeout as err:
            raise TimeoutError(f"no answer from the feature store within {FEAST_TIMEOUT_S} s") from err

    def check_feast(self) -> bool:
        """The online store answers a look-up."""
        try:
            self._feast(online_feature_rows, [0])
            self.feast.ok()
            return True
        except Exception as err:  # noqa: BLE001 - the store's own client reconnects (redis); opening may retry
            self.feast.fail(err)
            return False

    def ready(self) -> bool:
        """The API can answer, from its popularity fallback if need be: the catalogue is loaded and the request
        log takes writes. Triton and Feast being down degrades answers but does not make the API unready (a
        Triton outage must not take every replica out of the Service); `health()` reports them."""
        return len(self.live.catalogue.item_ids) > 0 and self.log_writable()

    def health(self) -> dict[str, Any]:
        """Readiness and the state of each dependency (GET /healthz/details)."""
        live = self.live
        return {
            "ready": self.ready(),
            "catalogue_items": int(len(live.catalogue.item_ids)),
            "request_log": {"writable": not self.log_writable.error, "error": self.log_writable.error or None},
            "triton": {"up": self.triton.up, "error": self.triton.error or None,
                       "model_version": live.model.model_version if live.model else None},
            "feature_store": {"up": self.feast.up, "error": self.feast.error or None},
        }

    def _watch(self) -> None:
        while not self._stop.wait(HEALTH_INTERVAL_S):
            try:
                self.check_triton()
                if not self.feast.up:
                    self.check_feast()
            except Exception:  # noqa: BLE001 - the watcher must never die
                log.exception("health watcher")

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        for client in (self._client, self._watch_client, *self._retired):
            client.close()
        self._feast_pool.shutdown(wait=False, cancel_futures=True)
        self.request_log.close()

    # ---- /recommend ----------------------------------------------------------------------------------
    def _features(self, user_id: int | None) -> dict[str, Any] | None:
        """Profile and recent items of a user key from the online store (None when the store is down); a user
        without a key (a string id the id map does not hold yet) is unknown without a look-up."""
        if user_id is None:
            return {"known": False, "profile": {}, "recent": []}
        if not self.feast.up:
            return None
        try:
            row = self._feast(online_feature_rows, [user_id])[0]
        except Exception as err:  # noqa: BLE001
            if dependency_down(err):
                self.feast.fail(err)
            else:
                log.warning("feature look-up failed for user key %s: %r", user_id, err)
            return None
        profile = {name: row.get(name) for name in self.config.dataset.user_attributes}
        profile = {name: None if value is not None and value != value else value  # NaN is missing, as None
                   for name, value in profile.items()}
        known = any(v is not None for v in profile.values()) or (row["user_interaction_count"] or 0) > 0
        return {"known": known, "profile": profile, "recent": row["recent_item_ids"]}

    def _rank(self, live: Live, recent: list[int], profile: dict[str, Any], exclude: list[int], k: int,
              filters: FiltersBase | None) -> tuple[Live, np.ndarray | None, list[tuple[int, float]]]:
        """Rank by the exact version of `live.model` (its manifest, catalogue and Triton version together).
        When Triton no longer serves that version (a switch finished since `live` was read), the live state is
        re-read once and the request is ranked by the new version end to end; returns the state used, the
        filter mask of its catalogue and the ranking."""
        mask = live.catalogue.mask(filters)
        try:
            return live, mask, self._rank_version(live, recent, profile, exclude, k, mask)
        except TritonClientError as err:
            if not dependency_down(err):  # this request's values were refused: no version question to settle
                raise
            self.check_triton()
            newer = self.live
            if newer.model is None or newer.model.version == live.model.version:
                raise
        log.info("version %d left Triton during a request; ranked by version %d", live.model.version,
                 newer.model.version)
        mask = newer.catalogue.mask(filters)
        return newer, mask, self._rank_version(newer, recent, profile, exclude, k, mask)

    def _rank_version(self, live: Live, recent: list[int], profile: dict[str, Any], exclude: list[int], k: int,
                      mask: np.ndarray | None) -> list[tuple[int, float]]:
        model = live.model
        fetch = k
        if mask is not None:
            rows = live.catalogue.rows(model.sorted_ids)
            selectivity = float(mask[rows[rows >= 0]].sum()) / max(model.n_items, 1)
            fetch = model.n_items if selectivity <= 0 else math.ceil(k / selectivity * OVERFETCH_SLACK)
        fetch = max(1, min(fetch, model.n_items))
        codes = encode_profile(model.manifest, profile)
        ids, scores = self._client.recommend(recent, codes, exclude, fetch, version=model.version)
        if mask is not None:
            rows = live.catalogue.rows(ids)
            keep = (rows >= 0) & mask[np.maximum(rows, 0)]
            ids, scores = ids[keep], scores[keep]
        return [(int(i), float(s)) for i, s in zip(ids[:k], scores[:k], strict=True)]

    def recommend(self, req: BaseModel, *, reveal_history: bool) -> BaseModel:
        """Answer one RecommendRequest (of `self.models`) with a RecommendResponse; never raises for Triton
        or Feast failures (popularity answers, `degraded: true`). Explanations name the user's recent items
        only when the caller may read the user's history (`reveal_history`, see serving.auth)."""
        t0 = time.perf_counter()
        timings = dict.fromkeys(STAGES, 0.0)
        reasons: list[str] = []
        live = self.live  # one version's model state, catalogue and id maps for the whole request
        feats = self._features(live.users.key(req.user_id))
        timings["feast"] = time.perf_counter() - t0
        request_profile = (req.profile or self.models.Profile()).model_dump()
        if feats is None:
            reasons.append(f"feature store unavailable: {self.feast.error or 'skipped after a recent failure'}")
            known, recent, profile = False, [], request_profile
        else:
            known, recent = feats["known"], feats["recent"]
            profile = feats["profile"] if known else request_profile
        cold_start = feats is not None and not known
        has_profile = any(v is not None for v in profile.values())
        if cold_start:
            reasons.append("unknown user: ranked from the given profile" if has_profile
                           else "unknown user without a profile: popularity")
        exclude = recent if req.exclude_seen else []
        mask = live.catalogue.mask(req.filters)
        model = live.model
        ranked: list[tuple[int, float]] = []
        source = POPULARITY_VERSION
        use_model = feats is not None and (known or has_profile)
        if use_model and model is None:
            reasons.append(f"no model served: {self.triton.error or 'Triton not checked yet'}")
        elif use_model and not self.triton.up:
            reasons.append(f"Triton unavailable: {self.triton.error}")
        elif use_model:
            t1 = time.perf_counter()
            try:
                live, mask, ranked = self._rank(live, recent, profile, exclude, req.k, req.filters)
                model, source = live.model, "model"
            except Exception as err:  # noqa: BLE001 - any Triton failure degrades this request to popularity
                if dependency_down(err):
                    self.triton.fail(err)
                    reasons.append(f"Triton unavailable: {str(err)[:300]}")
                else:  # this request's values were refused: Triton stays up for everyone else
                    log.warning("model ranking failed for one request: %r", err)
                    reasons.append(f"model ranking failed for this request: {str(err)[:300]}")
            timings["triton"] = time.perf_counter() - t1
        degraded = use_model and source != "model" or feats is None
        items = self._items(live, ranked, "model", recent, reveal_history)
        if len(items) < req.k:  # fallback, or too few items passed the filters: popular items fill up
            taken = {item for item, _ in ranked} | set(exclude)
            extra = live.catalogue.popular(req.k - len(items), taken, mask)
            items += self._items(live, extra, "popularity", recent, reveal_history, start=len(items))
            if source == "model" and extra:
                reasons.append(f"only {len(ranked)} ranked items passed the filters; popular items fill up")
        if degraded or not use_model:
            FALLBACKS.labels(reason="degraded" if degraded else "cold_start_popularity").inc()
        response = self.models.RecommendResponse(
            request_id=uuid.uuid4().hex, user_id=req.user_id,
            model_version=model.model_version if source == "model" and model else POPULARITY_VERSION,
            cold_start=cold_start, degraded=degraded, reasons=reasons, items=items, timings_ms={})
        t2 = time.perf_counter()
        self.request_log.append_request(RequestRecord(
            request_id=response.request_id, ts=datetime.now(UTC), user_id=req.user_id, k=req.k,
            exclude_seen=req.exclude_seen, filters=req.filters.model_dump(exclude_none=True) if req.filters else {},
            profile={k: v for k, v in profile.items() if v is not None}, item_ids=[i.item_id for i in items],
            scores=[i.score for i in items], model_version=response.model_version, degraded=degraded,
            cold_start=cold_start, latency_ms=(t2 - t0) * 1000))
        timings["log"] = time.perf_counter() - t2
        total = time.perf_counter() - t0
        for stage in STAGES:
            STAGE_LATENCY.labels(stage=stage).observe(timings[stage])
        timings["service"] = max(total - sum(timings[s] for s in STAGES), 0.0)
        timings["total"] = total
        response.timings_ms = {k: round(v * 1000, 3) for k, v in timings.items()}
        return response

    def _items(self, live: Live, ranked: list[tuple[int, float]], source: str, recent: list[int],
               reveal_history: bool, start: int = 0) -> list[BaseModel]:
        """Response items (external ids, title, displayed attributes, explanation) of ranked item keys, described
        by `live` (the request's one state); without `reveal_history` the explanation names no recent item and
        closest_recent_item_id stays null."""
        model = live.model if source == "model" else None
        near = model.closest([i for i, _ in ranked], recent) if model is not None and ranked else []
        out = []
        for n, (item, score) in enumerate(ranked):
            meta = live.catalogue.describe(item)
            closest, sim = near[n] if near else (None, 0.0)
            if source == "popularity":
                why = "popular in the latest window of interactions"
            elif closest is not None and reveal_history:
                title = live.catalogue.title(closest) or f"item {live.items.external(closest)}"
                why = f"closest to your recent '{title}' (similarity {sim:.2f})"
            elif closest is not None:
                why, closest = "close to your recent interactions", None
            else:
                why = "matches your profile"
            out.append(self.models.RecommendedItem(
                item_id=live.items.external(item), rank=start + n + 1, score=round(score, 6), explanation=why,
                closest_recent_item_id=None if closest is None else live.items.external(closest), source=source,
                **meta))
        return out

    # ---- /interactions -------------------------------------------------------------------------------
    def interaction(self, req: BaseModel, *, reveal_history: bool) -> BaseModel:
        """Log one InteractionRequest (external ids) and push it to the online store under the ids' keys; an
        id the id maps do not hold yet is logged only (the next ingest gives it a key). The user's recent items
        come back only when the caller may read the user's history (`reveal_history`)."""
        ts = req.event_timestamp or datetime.now(UTC)
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        pushed, recent, reason = False, [], None
        live = self.live  # the id maps of one state for the whole request
        user_key, item_key = live.users.key(req.user_id), live.items.key(req.item_id)
        if user_key is None or item_key is None:
            which = "user_id" if user_key is None else "item_id"
            reason = f"{which} {getattr(req, which)!r} is not in the id map yet: logged, pushed after the next ingest"
        elif self.feast.up:
            try:
                row = self._feast(push_interaction, user_key, item_key, req.rating, ts,
                                  self.config.features.last_n_items)
                pushed, recent = True, [live.items.external(int(i)) for i in row["recent_item_ids"]]
            except Exception as err:  # noqa: BLE001 - logged anyway; pushed after the next ingest
                if dependency_down(err):
                    self.feast.fail(err)
                    reason = f"feature store unavailable: {str(err)[:300]}"
                else:  # this event's values were refused: the store stays up for everyone else
                    log.warning("feature push failed for one event: %r", err)
                    reason = f"feature push failed for this event: {str(err)[:300]}"
        else:
            reason = f"feature store unavailable: {self.feast.error}"
        self.request_log.append_interaction(req.user_id, req.item_id, req.rating, ts)
        if not pushed:
            FALLBACKS.labels(reason="push_failed").inc()
        return self.models.InteractionResponse(user_id=req.user_id, item_id=req.item_id, logged=True, pushed=pushed,
                                   degraded=not pushed, recent_item_ids=recent if reveal_history else [],
                                   reason=reason)


# ----------------------------------------------------------------------------------------------- service
def _server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={value:.3f}" for name, value in timings.items())


def _unavailable(endpoint: str, err: Exception) -> JSONResponse:
    REQUESTS.labels(endpoint=endpoint, outcome="error").inc()
    log.error("%s failed: %s", endpoint, err)
    return JSONResponse({"error": f"{endpoint} could not be served: {err}"}, status_code=503)


def _count_rejection(path: str, status: int) -> None:
    """Requests the HTTP guard refused, counted per API route (other paths are not labels: no cardinality)."""
    if path in JSON_ROUTES:
        REQUESTS.labels(endpoint=path.strip("/"), outcome="rejected").inc()


async def _health_details(request: Request) -> JSONResponse:
    """GET /healthz/details: readiness, Triton, the feature store and the request log (see Engine.health)."""
    engine = bentoml.get_current_service().engine
    return JSONResponse(await run_in_threadpool(engine.health))


CONFIG = load_config()  # $RECSYS_CONFIG
MODELS = api_models(CONFIG.dataset, RequestLimits.from_serving(CONFIG.serving))  # the declared data set's models


@bentoml.service(name="recsys_recommender", workers=1, threads=8, resources={"cpu": "1"},
                 traffic={"timeout": CONFIG.serving.request_timeout_s + 5},  # RequestGuard answers first
                 logging={"access": {"enabled": False}})
class RecommendationService:
    """POST /recommend, POST /interactions; GET /healthz, /livez, /readyz (the API can answer, from its fallback if
    need be), /healthz/details (each dependency's state), /metrics; every
    route but the probes and the OpenAPI document needs a bearer token with its scope (serving/auth.py)."""

    def __init__(self) -> None:
        self.engine = Engine(load_config())

    def __is_ready__(self) -> bool:
        return self.engine.ready()

    @bentoml.api(route="/recommend", input_spec=MODELS.RecommendRequest)
    def recommend(self, ctx: bentoml.Context, **body: Any) -> MODELS.RecommendResponse:
        """Top-k items for a user: Feast features, one Triton call, metadata and an explanation per item."""
        t0 = time.perf_counter()
        try:
            request = MODELS.RecommendRequest.model_construct(**body)
            response = self.engine.recommend(
                request, reveal_history=may_read_history(caller_of(ctx.request.scope), request.user_id))
        except RecsysError as err:
            return _unavailable("recommend", err)
        ctx.response.headers["Server-Timing"] = _server_timing(response.timings_ms)
        outcome = "degraded" if response.degraded else "cold_start" if response.cold_start else "ok"
        REQUESTS.labels(endpoint="recommend", outcome=outcome).inc()
        LATENCY.labels(endpoint="recommend").observe(time.perf_counter() - t0)
        return response

    @bentoml.api(route="/interactions", input_spec=MODELS.InteractionRequest)
    def interactions(self, ctx: bentoml.Context, **body: Any) -> MODELS.InteractionResponse:
        """Record one interaction: pushed to Feast's online store at once and appended to the log."""
        t0 = time.perf_counter()
        try:
            request = MODELS.InteractionRequest.model_construct(**body)
            response = self.engine.interaction(
                request, reveal_history=may_read_history(caller_of(ctx.request.scope), request.user_id))
        except RecsysError as err:
            return _unavailable("interactions", err)
        REQUESTS.labels(endpoint="interactions", outcome="degraded" if response.degraded else "ok").inc()
        LATENCY.labels(endpoint="interactions").observe(time.perf_counter() - t0)
        return response


RecommendationService.mount_asgi_app(Starlette(routes=[Route("/details", _health_details, methods=["GET"])]),
                                     path="/healthz")
# outermost: headers, body size, deadline and bounded error bodies (serving/http_guard.py); then who is calling
RecommendationService.add_asgi_middleware(RequestGuard, max_body_bytes=CONFIG.serving.max_body_bytes,
                                          request_timeout_s=CONFIG.serving.request_timeout_s,
                                          on_reject=_count_rejection)
RecommendationService.add_asgi_middleware(BearerAuth)
