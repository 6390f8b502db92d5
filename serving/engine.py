"""The recommendation API's request logic without HTTP: request -> online features -> one call of the
`recommender` ensemble -> filters, fallback, explanations -> response, each served list appended to the request log.
Requests can come one at a time (`recommend`) or as a batch (`recommend_many`: one feature read, their Triton calls
in flight together, one log commit); one request is the batch of one.

The parts it talks to are injected: a scorer of the ensemble (Triton's gRPC client in the service; `ReferenceScorer`,
the same ensemble run in process, where no Triton runs), the online store (Feast) and the request log (contract C6).
When the scorer or the store fail, a popularity ranking answers with `degraded: true`; a circuit breaker skips the
failed part and a watcher thread re-checks it (fresh scorer, fresh store) so the engine recovers without a restart.
Only an outage trips a breaker: an error about one request's values degrades that request alone. serving/api_routes.py
answers HTTP with it inside the BentoML service (serving/service.py).
"""

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel

from components.bundle_ops import PRIOR_KEY, ItemIndex, PopularityPrior
from components.config import Config
from components.ensemble import EnsembleReference
from components.features import feature_data_dir, open_store
from components.features_online import online_feature_rows, push_interaction
from components.id_maps import ExternalIds, load_id_maps
from components.ingest import id_maps_dir
from components.item_events import ItemEventIndex, datetime_us, epoch_us, read_item_events
from components.request_log import InteractionFollower, RequestLog, RequestRecord
from components.request_logs import open_request_log
from components.rerank import mmr_order, pool_size
from serving import triton_repo as tr
from serving.api_models import ApiModels, RequestLimits, api_models
from serving.catalogue import Catalogue, ModelState, ServiceError
from serving.triton_client import RecommenderClient, TritonClientError

log = logging.getLogger("recsys.api")

HEALTH_INTERVAL_S = 1.0  # watcher period: version check and re-check of failed parts
FEAST_TIMEOUT_S = 1.0  # a feature look-up or push without an answer by then counts as a failure
OVERFETCH_SLACK = 1.5  # filtered requests fetch k / selectivity * this (capped at the catalogue), then the whole
# catalogue once when fewer than k of those pass the filters (the user's taste and the filter disagree)
POPULARITY_VERSION = "popularity"
STAGES = ("feast", "triton", "log")
SERVICE_STAGE = "service"  # what the service spends around the stages (parsing, ranking, answering)
TIMED_PARTS = (*STAGES, SERVICE_STAGE)  # the parts of a /recommend answer's Server-Timing, beside "total"


class Scorer(Protocol):
    """What the engine calls of the `recommender` ensemble (serving.triton_client.RecommenderClient's signatures)."""

    def server_ready(self) -> bool: ...

    def served_versions(self) -> list[int]: ...

    def recommend(self, history_item_ids: Sequence[int], profile: Sequence[int], exclude_item_ids: Sequence[int] = (),
                  k: int = 10, version: int | None = None, prior_item_ids: Sequence[int] | np.ndarray = (),
                  prior_counts: Sequence[float] | np.ndarray = ()) -> tuple[np.ndarray, np.ndarray]: ...

    def start_recommend(self, history_item_ids: Sequence[int], profile: Sequence[int],
                        exclude_item_ids: Sequence[int] = (), k: int = 10, version: int | None = None,
                        prior_item_ids: Sequence[int] | np.ndarray = (),
                        prior_counts: Sequence[float] | np.ndarray = ()) -> "Answer": ...

    def close(self) -> None: ...


class Answer(Protocol):
    """A ranking asked of a scorer: `result()` waits for it and gives (item ids, scores) or raises the call's error."""

    def result(self) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Answered:
    """The answer of a call made at once (or its error), read like a call in flight."""

    value: tuple[np.ndarray, np.ndarray] | None = None
    error: Exception | None = None

    @classmethod
    def of(cls, call: Callable[[], tuple[np.ndarray, np.ndarray]]) -> "Answered":
        try:
            return cls(call())
        except Exception as err:  # noqa: BLE001 - raised to whoever reads the answer
            return cls(error=err)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.error is not None:
            raise self.error
        return self.value


class ReferenceScorer:
    """The `recommender` ensemble run in process (components.ensemble) for the versions it is given, with
    Triton's version semantics: `served_versions` lists them, a call for another version is a TritonClientError
    with status NOT_FOUND. `serve` replaces the served versions (a switch), as Triton's model control does."""

    def __init__(self, bundles: dict[int, str | Path]) -> None:
        """`bundles`: deployment version -> the serving bundle it was written from."""
        self._references: dict[int, EnsembleReference] = {}
        self.serve(bundles)

    def serve(self, bundles: dict[int, str | Path]) -> None:
        """Serve exactly these versions from now on."""
        self._references = {int(v): self._references.get(int(v)) or EnsembleReference(path)
                            for v, path in bundles.items()}

    def server_ready(self) -> bool:
        return True

    def served_versions(self) -> list[int]:
        return sorted(self._references)

    def recommend(self, history_item_ids: Sequence[int], profile: Sequence[int], exclude_item_ids: Sequence[int] = (),
                  k: int = 10, version: int | None = None, prior_item_ids: Sequence[int] | np.ndarray = (),
                  prior_counts: Sequence[float] | np.ndarray = ()) -> tuple[np.ndarray, np.ndarray]:
        references = self._references  # one mapping for the whole call: `serve` may replace it meanwhile
        if version is None and references:
            version = max(references)
        if version not in references:
            raise TritonClientError(tr.ENSEMBLE, "NOT_FOUND", f"version {version} is not served")
        return references[version].recommend(list(history_item_ids), list(profile), list(exclude_item_ids), k,
                                             prior_item_ids, prior_counts)

    def start_recommend(self, history_item_ids: Sequence[int], profile: Sequence[int],
                        exclude_item_ids: Sequence[int] = (), k: int = 10, version: int | None = None,
                        prior_item_ids: Sequence[int] | np.ndarray = (),
                        prior_counts: Sequence[float] | np.ndarray = ()) -> Answer:
        """`recommend`, computed now (in process there is nothing to overlap)."""
        return Answered.of(lambda: self.recommend(history_item_ids, profile, exclude_item_ids, k, version,
                                                  prior_item_ids, prior_counts))

    def close(self) -> None:
        """Nothing to release (the sessions go with the object)."""


@dataclass(frozen=True)
class Live:
    """Everything a request reads that changes with the deployed version: the model state, the item catalogue
    and the id maps. Immutable: a request takes it once (`Engine.live`) and uses it to the end; a version
    change builds a new one and replaces the reference in one assignment."""

    model: ModelState | None
    catalogue: Catalogue
    users: ExternalIds
    items: ExternalIds
    priors: "Priors | None" = None


@dataclass
class _Served:
    """One /recommend request on its way through `Engine.recommend_many`: what it is answered from and how."""

    req: BaseModel
    reveal_history: bool
    live: Live  # the state it is ranked by (a newer one when a version switch finished meanwhile)
    who: tuple[int | None, datetime]  # (user key, request time): the popularity priors' counts
    reasons: list[str] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    recent: list[int] = field(default_factory=list)
    exclude: list[int] = field(default_factory=list)
    mask: np.ndarray | None = None
    cold_start: bool = False
    rank: bool = False  # the model ranks it
    degraded: bool = False
    diversity: float = 0.0
    ranked: list[tuple[int, float]] = field(default_factory=list)
    fetched: int = 0  # how many of the model's best items were asked for
    source: str = POPULARITY_VERSION
    triton_s: float = 0.0  # from the batch's first Triton call to this request's ranking


@dataclass(frozen=True)
class Priors:
    """The served version's popularity priors (from its manifest) and the interactions they count."""

    prior: PopularityPrior
    events: ItemEventIndex

    @classmethod
    def load(cls, model: ModelState, events: pd.DataFrame) -> "Priors":
        ids = np.empty_like(model.sorted_ids)
        ids[model.sorted_rows] = model.sorted_ids  # catalogue row order
        index = ItemIndex(ids)
        return cls(PopularityPrior(index, model.manifest.get(PRIOR_KEY)), ItemEventIndex(index, events))

    def counts(self, user_key: int | None, as_of: datetime) -> tuple[np.ndarray, np.ndarray]:
        """Sparse (item ids, counts) of the priors for one request (no counts when the priors are off)."""
        if not self.prior.active:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return self.events.prior_counts(self.prior, -1 if user_key is None else user_key, datetime_us(as_of))


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


def _event_keys(logged: pd.DataFrame, users: ExternalIds, items: ExternalIds) -> pd.DataFrame:
    """Logged interactions (external ids) as (user key, item key, event_timestamp); ids without a key dropped."""
    keys = pd.DataFrame({"user_id": [users.key(u) for u in logged["user_id"]],
                         "item_id": [items.key(i) for i in logged["item_id"]],
                         "event_timestamp": logged["event_timestamp"].to_numpy()}).dropna()
    return keys.astype({"user_id": "int64", "item_id": "int64"})


# ------------------------------------------------------------------------------------------------ engine
class Engine:
    """The API's logic without HTTP: usable in-process (tests, benchmarks) and inside the BentoML service."""

    def __init__(self, config: Config, *, new_scorer: Callable[[], Scorer] | None = None,
                 open_features: Callable[[], Any] | None = None, request_log: RequestLog | None = None,
                 watch: bool = True, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """`new_scorer` makes a fresh scorer of the ensemble (default: a gRPC client of Triton at serving.host and
        serving.triton_grpc_port; called again to reconnect), `open_features` opens the online store (default:
        Feast, components.features.open_store), `request_log` is where served lists and interactions are
        appended (default: serving.request_log); `watch` starts the thread that re-checks failed parts; `clock` is
        the request time (the popularity priors count the interactions before it)."""
        self.config = config
        self.clock = clock
        s = config.serving
        self.repo_dir = Path(s.model_repository)
        self.grpc_url = f"{s.host}:{s.triton_grpc_port}"
        self.schema = config.dataset
        self.models: ApiModels = api_models(self.schema, RequestLimits.from_serving(s))
        self.live = Live(None, Catalogue.from_feature_dir(feature_data_dir(config), self.schema), *self._load_ids())
        graph = s.retrieval_layout == "graph"  # versions and readiness: the ensemble's
        self._new_scorer = new_scorer or (lambda: RecommenderClient(
            self.grpc_url, timeout_s=s.grpc_timeout_s, retries=s.grpc_retries,
            infer_model=tr.GRAPH if graph else tr.ENSEMBLE, batch_of_one=graph))
        self._open_features = open_features or (lambda: open_store(config))
        self.request_log = request_log if request_log is not None else open_request_log(s.request_log)
        # several processes append to a shared log: the priors count its interactions from there (follow_log)
        self._follower = InteractionFollower(self.request_log) if self.request_log.shared else None
        self.log_writable = WritableCheck(self.request_log)
        self.feast = Breaker("feature store")
        self.triton = Breaker(f"Triton at {self.grpc_url}")
        # one thread talks to Feast: look-ups and pushes are serialised and each waits at most FEAST_TIMEOUT_S
        # (a Redis client that retries for seconds must not stall the API)
        self._feast_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-feast")
        self._pending_reads: list[tuple[int, Future]] = []  # look-ups waiting for the next online read
        self._reads_lock = threading.Lock()
        self.feature_reads = 0  # online reads made for /recommend (several look-ups may share one)
        self._store = None
        try:
            self._store = self._open_features()  # first open imports Feast: no deadline here
        except Exception as err:  # noqa: BLE001 - the watcher retries
            self.feast.fail(err)
        self._client = self._new_scorer()
        self._watch_client = self._new_scorer()
        self._retired: list[Scorer] = []
        self._stop = threading.Event()
        self._check_lock = threading.Lock()
        self.check_feast()
        self.check_triton()
        self._watcher = None
        if watch:
            self._watcher = threading.Thread(target=self._watch, name="recsys-api-health", daemon=True)
            self._watcher.start()

    # ---- dependencies --------------------------------------------------------------------------------
    def _reconnect(self) -> None:
        """Fresh gRPC channels (an old channel may sit in a long reconnect back-off); old ones closed later."""
        for old in self._retired:
            old.close()
        self._retired = [self._client, self._watch_client]
        self._client, self._watch_client = self._new_scorer(), self._new_scorer()

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
                self.live = Live(model, *tables, self._priors(model, *tables[1:]))  # one assignment: old or new
                log.info("serving version %d (model %s)", version, model.model_version)
            self.triton.ok()
            return True
        except Exception as err:  # noqa: BLE001 - any failure means "down"; the breaker keeps the reason
            self.triton.fail(err)
            self._reconnect()
            return False

    def _priors(self, model: ModelState, users: ExternalIds, items: ExternalIds) -> Priors:
        """The version's priors over the events of the feature tables plus the interactions logged since (their
        external ids read through the version's id maps)."""
        events = read_item_events(feature_data_dir(self.config))
        started = datetime_us(datetime.now(UTC))
        try:
            since = events["event_timestamp"].max() if len(events) else None
            logged = self.request_log.logged_interactions(since=since)
            if self._follower is not None:  # from now on the watcher adds what any process logs
                self._follower.restart(logged, started)
            if len(logged) and since is not None:
                logged = logged[pd.to_datetime(logged["event_timestamp"], utc=True) > since]
            keys = _event_keys(logged, users, items)
            if len(keys):
                events = pd.concat([events, keys], ignore_index=True)
        except Exception as err:  # noqa: BLE001 - the table's events still count
            log.warning("logged interactions not counted by the popularity priors: %s", err)
            if self._follower is not None:
                self._follower.restart(pd.DataFrame({"seq": [], "logged_us": []}), started)
        return Priors.load(model, events)

    def follow_log(self) -> int:
        """Count in the priors the interactions any worker or replica logged since the last call (a shared
        request log only: each process of a shared log counts them all from there, its own included); returns
        how many were added. The watcher calls it every HEALTH_INTERVAL_S."""
        with self._check_lock:  # not while a version change rebuilds the priors and restarts the follower
            live = self.live
            if self._follower is None or live.priors is None:
                return 0
            keys = _event_keys(self._follower.new_rows(datetime_us(datetime.now(UTC))), live.users, live.items)
            if len(keys):
                live.priors.events.add_many(keys["user_id"].to_numpy(), keys["item_id"].to_numpy(),
                                            epoch_us(keys["event_timestamp"]))
            return len(keys)

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
            return fn(self._opened_store(), *args)

        return self._wait(self._feast_pool.submit(run))

    def _opened_store(self) -> Any:
        """The online store (opened on first use; on the Feast thread)."""
        if self._store is None:
            self._store = self._open_features()
        return self._store

    @staticmethod
    def _wait(future: Future) -> Any:
        try:
            return future.result(timeout=FEAST_TIMEOUT_S)
        except FutureTimeout as err:
            raise TimeoutError(f"no answer from the feature store within {FEAST_TIMEOUT_S} s") from err

    def _feature_rows(self, user_keys: list[int]) -> list[dict[str, Any] | Exception]:
        """The `serving` features of each user key, or the error of its look-up. Look-ups that arrive while
        another runs are read together in the next one (one online read for all of them, on the Feast thread); a
        look-up without an answer within FEAST_TIMEOUT_S gets a TimeoutError."""
        futures: list[Future] = [Future() for _ in user_keys]
        with self._reads_lock:
            first = not self._pending_reads  # the queue was empty: nobody has scheduled a read for it yet
            self._pending_reads += zip(user_keys, futures, strict=True)
        if first:
            self._feast_pool.submit(self._read_pending)
        deadline = time.monotonic() + FEAST_TIMEOUT_S
        rows: list[dict[str, Any] | Exception] = []
        for future in futures:
            try:
                rows.append(future.result(timeout=max(deadline - time.monotonic(), 0.0)))
            except FutureTimeout:
                rows.append(TimeoutError(f"no answer from the feature store within {FEAST_TIMEOUT_S} s"))
            except Exception as err:  # noqa: BLE001 - the look-up's own error, handed to its request
                rows.append(err)
        return rows

    def _read_pending(self) -> None:
        """One online read for every queued look-up (Feast thread). When a read of several keys is refused for
        their values (not an outage), each key is read alone, so only the look-up at fault gets the error."""
        with self._reads_lock:
            batch, self._pending_reads = self._pending_reads, []
        groups = [batch] if batch else []
        while groups:
            group = groups.pop()
            try:
                rows = online_feature_rows(self._opened_store(), [key for key, _ in group])
            except BaseException as err:  # noqa: BLE001 - handed to the waiting requests
                if len(group) > 1 and not dependency_down(err):
                    groups.extend([entry] for entry in group)
                    continue
                for _, future in group:
                    future.set_exception(err)
                continue
            for (_, future), row in zip(group, rows, strict=True):
                future.set_result(row)
        self.feature_reads += 1 if batch else 0

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
                self.follow_log()
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
    def _features(self, user_keys: list[int | None]) -> list[dict[str, Any] | None]:
        """Profile and recent items of each user key from the online store, in one read (None where the store is
        down or the look-up failed); a user without a key (a string id the id map does not hold yet) is unknown
        without a look-up."""
        out: list[dict[str, Any] | None] = [None if key is not None else {"known": False, "profile": {}, "recent": []}
                                            for key in user_keys]
        wanted = [n for n, key in enumerate(user_keys) if key is not None]
        if not wanted or not self.feast.up:
            return out
        for n, row in zip(wanted, self._feature_rows([user_keys[n] for n in wanted]), strict=True):
            if isinstance(row, Exception):
                if dependency_down(row):
                    self.feast.fail(row)
                else:
                    log.warning("feature look-up failed for user key %s: %r", user_keys[n], row)
                continue
            profile = {name: row.get(name) for name in self.config.dataset.user_attributes}
            profile = {name: None if value is not None and value != value else value  # NaN is missing, as None
                       for name, value in profile.items()}
            known = any(v is not None for v in profile.values()) or (row["user_interaction_count"] or 0) > 0
            out[n] = {"known": known, "profile": profile, "recent": row["recent_item_ids"]}
        return out

    def _plan(self, live: Live, req: BaseModel, reveal_history: bool, who: tuple[int | None, datetime],
              feats: dict[str, Any] | None) -> "_Served":
        """What one request is answered from, given its features: profile, history, exclusions, and whether the
        model ranks it (else popularity, with the reasons why)."""
        plan = _Served(req, reveal_history, live, who)
        request_profile = (req.profile or self.models.Profile()).model_dump()
        if feats is None:
            plan.reasons.append(f"feature store unavailable: {self.feast.error or 'skipped after a recent failure'}")
            known, plan.profile = False, request_profile
        else:
            known, plan.recent = feats["known"], feats["recent"]
            plan.profile = feats["profile"] if known else request_profile
        plan.cold_start = feats is not None and not known
        has_profile = any(v is not None for v in plan.profile.values())
        if plan.cold_start:
            plan.reasons.append("unknown user: ranked from the given profile" if has_profile
                                else "unknown user without a profile: popularity")
        plan.exclude = plan.recent if req.exclude_seen else []
        plan.mask = live.catalogue.mask(req.filters)
        use_model = feats is not None and (known or has_profile)
        if use_model and live.model is None:
            plan.reasons.append(f"no model served: {self.triton.error or 'Triton not checked yet'}")
        elif use_model and not self.triton.up:
            plan.reasons.append(f"Triton unavailable: {self.triton.error}")
        elif use_model:
            plan.diversity = self.config.trust.diversity if req.diversity is None else req.diversity
            plan.rank = True
        plan.degraded = feats is None or use_model and not plan.rank
        return plan

    def _start_rank(self, plan: "_Served", wait: bool, whole_catalogue: bool = False) -> Answer:
        """Ask the scorer for `plan`'s ranking by the exact version of `plan.live.model` (its manifest, catalogue and
        Triton version together); `wait`: answered before it returns, else in flight. A filtered request asks for
        enough items that k pass at its filters' share of the catalogue, or with `whole_catalogue` for all."""
        live, req = plan.live, plan.req
        model = live.model
        want = pool_size(req.k, model.n_items) if plan.diversity > 0 else req.k  # MMR picks k among the best `want`
        fetch = want
        if plan.mask is not None:
            rows = live.catalogue.rows(model.sorted_ids)
            selectivity = float(plan.mask[rows[rows >= 0]].sum()) / max(model.n_items, 1)
            fetch = model.n_items if selectivity <= 0 or whole_catalogue else \
                math.ceil(want / selectivity * OVERFETCH_SLACK)
        fetch = plan.fetched = max(1, min(fetch, model.n_items))
        codes = model.profile_encoder.encode_one(plan.profile)
        prior_ids, prior_counts = live.priors.counts(*plan.who) if live.priors is not None else ((), ())
        args = (plan.recent, codes, plan.exclude, fetch, model.version, prior_ids, prior_counts)
        return Answered.of(lambda: self._client.recommend(*args)) if wait else self._client.start_recommend(*args)

    def _finish_rank(self, plan: "_Served", answer: Answer) -> list[tuple[int, float]]:
        """The ranking of an answer: the request's filters applied and, on request, diversity (MMR over the
        version's item embeddings, components.rerank)."""
        live = plan.live
        ids, scores = answer.result()
        if plan.mask is not None:
            rows = live.catalogue.rows(ids)
            keep = (rows >= 0) & plan.mask[np.maximum(rows, 0)]
            ids, scores = ids[keep], scores[keep]
        if plan.diversity > 0:
            want = pool_size(plan.req.k, live.model.n_items)
            ids, scores = ids[:want], scores[:want]
            order = mmr_order(scores, live.model.unit_embeddings[np.maximum(live.model.rows(ids), 0)], plan.req.k,
                              plan.diversity)
            ids, scores = ids[order], scores[order]
        return [(int(i), float(s)) for i, s in zip(ids[:plan.req.k], scores[:plan.req.k], strict=True)]

    def _ranked(self, plan: "_Served", answer: Answer) -> None:
        """Read `plan`'s ranking into it (ranked again over the whole catalogue when fewer than k of the first
        fetch pass the filters). When Triton no longer serves the request's version (a switch finished since the
        request read `live`), the live state is re-read once and the request is ranked by the new version end to
        end; a failure degrades this request to popularity (an outage trips Triton's breaker)."""
        live = plan.live
        try:
            try:
                plan.ranked, plan.source = self._finish_rank(plan, answer), "model"
                if plan.mask is not None and len(plan.ranked) < plan.req.k and plan.fetched < live.model.n_items:
                    # too few of the model's best pass the filters: rank them over the whole catalogue
                    plan.ranked = self._finish_rank(plan, self._start_rank(plan, wait=True, whole_catalogue=True))
                return
            except TritonClientError as err:
                if not dependency_down(err):  # this request's values were refused: no version question to settle
                    raise
                newer = self.live
                if (newer.model is None or newer.model.version == live.model.version) and self.triton.up:
                    self.check_triton()  # once per outage: a request after it finds the breaker open
                    newer = self.live
                if newer.model is None or newer.model.version == live.model.version:
                    raise
            log.info("version %d left Triton during a request; ranked by version %d", live.model.version,
                     newer.model.version)
            plan.live, plan.mask = newer, newer.catalogue.mask(plan.req.filters)
            plan.ranked = self._finish_rank(plan, self._start_rank(plan, wait=True))
            plan.source = "model"
        except Exception as err:  # noqa: BLE001 - any Triton failure degrades this request to popularity
            if dependency_down(err):
                self.triton.fail(err)
                plan.reasons.append(f"Triton unavailable: {str(err)[:300]}")
            else:  # this request's values were refused: Triton stays up for everyone else
                log.warning("model ranking failed for one request: %r", err)
                plan.reasons.append(f"model ranking failed for this request: {str(err)[:300]}")
            plan.degraded = True

    def _respond(self, plan: "_Served") -> BaseModel:
        """The response to a ranked (or not) request: items with metadata, popular items filling up."""
        live, req = plan.live, plan.req
        model = live.model
        items = self._items(live, plan.ranked, "model", plan.recent, plan.reveal_history)
        if len(items) < req.k:  # fallback, or too few items passed the filters: popular items fill up
            taken = {item for item, _ in plan.ranked} | set(plan.exclude)
            extra = live.catalogue.popular(req.k - len(items), taken, plan.mask)
            items += self._items(live, extra, "popularity", plan.recent, plan.reveal_history, start=len(items))
            if plan.source == "model" and extra:
                plan.reasons.append(f"only {len(plan.ranked)} ranked items passed the filters; popular items fill up")
        return self.models.RecommendResponse(
            request_id=uuid.uuid4().hex, user_id=req.user_id,
            model_version=model.model_version if plan.source == "model" and model else POPULARITY_VERSION,
            cold_start=plan.cold_start, degraded=plan.degraded, reasons=plan.reasons, items=items, timings_ms={})

    @staticmethod
    def _record(plan: "_Served", response: BaseModel, latency_s: float) -> RequestRecord:
        """The request log's entry of one answered request."""
        req = plan.req
        return RequestRecord(
            request_id=response.request_id, ts=datetime.now(UTC), user_id=req.user_id, k=req.k,
            exclude_seen=req.exclude_seen, filters=req.filters.model_dump(exclude_none=True) if req.filters else {},
            profile={k: v for k, v in plan.profile.items() if v is not None},
            item_ids=[i.item_id for i in response.items], scores=[i.score for i in response.items],
            model_version=response.model_version, degraded=plan.degraded, cold_start=plan.cold_start,
            latency_ms=latency_s * 1000)

    def recommend(self, req: BaseModel, *, reveal_history: bool) -> BaseModel:
        """Answer one RecommendRequest (of `self.models`) with a RecommendResponse; never raises for Triton
        or Feast failures (popularity answers, `degraded: true`). Explanations name the user's recent items
        only when the caller may read the user's history (`reveal_history`, see serving.auth)."""
        answer = self.recommend_many([(req, reveal_history)])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def recommend_many(self, requests: Sequence[tuple[BaseModel, bool]]) -> list[BaseModel | Exception]:
        """Answer several (RecommendRequest, reveal_history) as `recommend` answers each, sharing the work that
        can be shared: one feature read for all, their Triton calls in flight together, one group commit of the
        request log. Returns each request's response, or the error that stopped it (a request log that did not
        take it), in order; one request's failure does not touch the others."""
        t0 = time.perf_counter()
        live, as_of = self.live, self.clock()  # one version's model state, catalogue and id maps for the batch
        keys = [live.users.key(req.user_id) for req, _ in requests]
        features = self._features(keys)
        feast_s = time.perf_counter() - t0
        results: list[BaseModel | Exception | None] = [None] * len(requests)
        plans: list[_Served | None] = [None] * len(requests)
        for n, ((req, reveal), key, feats) in enumerate(zip(requests, keys, features, strict=True)):
            try:
                plans[n] = self._plan(live, req, reveal, (key, as_of), feats)
            except Exception as err:  # noqa: BLE001 - this request's error, answered to it alone
                results[n] = err
        ranking = [plan for plan in plans if plan is not None and plan.rank]
        t1 = time.perf_counter()
        answers = []
        for plan in ranking:  # one call in flight per request; a batch of one waits on its call (cheaper)
            try:
                answers.append(self._start_rank(plan, wait=len(ranking) == 1))
            except Exception as err:  # noqa: BLE001 - e.g. a value the scorer's request cannot carry
                answers.append(Answered(error=err))
        for plan, answer in zip(ranking, answers, strict=True):
            self._ranked(plan, answer)
            plan.triton_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        responses: dict[int, BaseModel] = {}
        for n, plan in enumerate(plans):
            if plan is not None:
                try:
                    responses[n] = self._respond(plan)
                except Exception as err:  # noqa: BLE001
                    results[n] = err
        written = list(responses)
        errors = self.request_log.append_request_group(
            [self._record(plans[n], responses[n], t2 - t0) for n in written])
        log_s = time.perf_counter() - t2
        total = time.perf_counter() - t0
        for n, error in zip(written, errors, strict=True):
            if error is not None:
                results[n] = error
                continue
            timings = dict(zip(STAGES, (feast_s, plans[n].triton_s, log_s), strict=True))
            timings[SERVICE_STAGE] = max(total - sum(timings.values()), 0.0)
            timings["total"] = total
            responses[n].timings_ms = {k: round(v * 1000, 3) for k, v in timings.items()}
            results[n] = responses[n]
        return results

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
        if live.priors is not None and user_key is not None and item_key is not None and self._follower is None:
            live.priors.events.add(user_key, item_key, datetime_us(ts))  # counted from the next request
        return self.models.InteractionResponse(user_id=req.user_id, item_id=req.item_id, logged=True, pushed=pushed,
                                   degraded=not pushed, recent_item_ids=recent if reveal_history else [],
                                   reason=reason)
