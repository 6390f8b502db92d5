"""The closed loop, replayed: MovieLens in time order through the real API, monitoring, retraining, redeploy.

1. Train on the early period: its canonical tables are written to a folder and the training pipeline runs
   with data.source=files (ingest -> ... -> deploy to Triton); the BentoML API starts in front of it.
2. Serve the following weeks: for sampled events in time order, POST /recommend for the user, then POST
   /interactions with the real event (every request lands in the durable request log).
3. A shift: a cohort of users held out so far (e.g. every student) and a batch of items never seen in
   training (the shifted weeks' most wanted items, held back until then; their text is in the items table)
   arrive together.
4. After every replayed week, monitoring runs over that week of the log (baseline: the week before) and the
   retraining policy decides; a retrain runs the training pipeline on the data up to now (training tables +
   logged interactions), whose gate and deploy step put a new Triton version live; the API picks it up.
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
"""

from __future__ import annotations

import json
import logging
import operator
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Config, absolute_paths
from components.dataset import DatasetSchema
from components.errors import RecsysError
from components.processes import free_port
from components.schemas import INTERACTIONS, ITEMS, USERS, read_tables, table_path, write_tables
from monitoring.html import page, table

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
WEEK = pd.Timedelta(days=7)
_OPS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


class SimulationError(RecsysError, ValueError):
    """The simulation cannot run as configured, or a part of the loop failed; the message says which."""


@dataclass(frozen=True)
class SimSettings:
    """Sizes and periods of one replay (sim time = the data's own clock)."""

    train_weeks: float = 14.0  # the early period the first model is trained on
    serve_weeks: int = 2  # normal weeks served before the shift
    shift_weeks: int = 6  # weeks of shifted traffic
    events_per_week: int = 1000  # replayed events per week (sampled by user, kept in time order)
    events_per_user_week: int = 20  # at most this many events of one user per week (the first ones)
    cohort: str = "age<30"  # users held out until the shift: "<column><op><value>"
    new_items: int = 60  # items first seen at/after the training period, held back until the shift
    cohort_share: float = 0.8  # share of each shifted week's replayed events that come from the cohort
    k: int = 10
    seed: int = 0
    cooldown_weeks: float = 5.0  # policy cooldown (sim time); longer than the shift: one retrain per shift


@dataclass
class Plan:
    """What the replay will send: the training tables and the replayed events per week."""

    start: pd.Timestamp
    train_end: pd.Timestamp
    shift_start: pd.Timestamp
    end: pd.Timestamp
    train_tables: dict[str, pd.DataFrame]  # its items table lacks the new items: they launch with the shift
    weeks: list[pd.DataFrame]  # replayed events per week (user_id, item_id, rating, event_timestamp)
    cohort_users: np.ndarray
    new_items: np.ndarray
    items: pd.DataFrame  # the whole catalogue, new items included

    def items_at(self, now: pd.Timestamp) -> pd.DataFrame:
        """The catalogue at sim time `now`: the new items join it when the shift starts."""
        return self.items if now >= self.shift_start else self.train_tables[ITEMS]

    def week_start(self, i: int) -> pd.Timestamp:
        return self.train_end + i * WEEK

    def phase(self, i: int) -> str:
        return "shift" if self.week_start(i) >= self.shift_start else "serve"


@dataclass
class WeekRecord:
    """One replayed week: its sim and wall-clock spans, what the API answered, monitoring and the decision."""

    index: int
    phase: str
    sim_start: str
    sim_end: str
    wall_start: str
    wall_end: str
    events: int
    cohort_events: int
    new_item_events: int
    model_versions: dict[str, int]
    degraded: int
    seconds: float
    report_dir: str | None = None
    signals: dict[str, Any] = field(default_factory=dict)
    drifted_columns: list[str] = field(default_factory=list)
    decision: dict[str, Any] | None = None
    retrain: dict[str, Any] | None = None


# ------------------------------------------------------------------------------------------------ planning
def parse_cohort(spec: str) -> tuple[str, Callable[[Any, Any], Any], str]:
    """'tier=gold', 'age<25' -> (column, operator, value): a cohort of users by one of their attributes."""
    match = re.fullmatch(r"\s*(\w+)\s*(<=|>=|!=|=|<|>)\s*(.+?)\s*", spec)
    if not match:
        raise SimulationError(f"cohort {spec!r} is not '<column><op><value>' (op one of = != < <= > >=)")
    return match.group(1), _OPS[match.group(2)], match.group(3)


def cohort_users(users: pd.DataFrame, spec: str) -> np.ndarray:
    """Ids of the users the cohort expression selects."""
    column, op, raw = parse_cohort(spec)
    if column not in users.columns:
        raise SimulationError(f"cohort column {column!r} is not in the users table ({list(users.columns)})")
    values = users[column]
    value: Any = raw
    if pd.api.types.is_numeric_dtype(values):
        try:
            value = float(raw)
        except ValueError as err:
            raise SimulationError(f"cohort value {raw!r} is not a number but {column} is numeric") from err
    chosen = users.loc[op(values, value).fillna(False).astype(bool), "user_id"].to_numpy(np.int64)
    if len(chosen) == 0:
        raise SimulationError(f"cohort {spec!r} selects no user")
    return chosen


def sample_week(events: pd.DataFrame, cap: int, per_user: int, rng: np.random.Generator,
                cohort: np.ndarray | None = None, cohort_share: float = 0.0) -> pd.DataFrame:
    """At most `cap` events, whole users at a time (their first `per_user` events of the week), in time order;
    with a cohort, `cohort_share` of the events come from cohort users (fewer events when the cohort has few)."""
    events = events.sort_values("event_timestamp", kind="stable")
    events = events[events.groupby("user_id").cumcount() < per_user]
    if cohort is None or cohort_share <= 0:
        return _take_users(events, cap, rng)
    inside = events["user_id"].isin(cohort)
    part = _take_users(events[inside], int(round(cap * cohort_share)), rng)
    rest = _take_users(events[~inside], int(round(len(part) * (1 - cohort_share) / cohort_share)), rng)
    return pd.concat([part, rest]).sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def _take_users(events: pd.DataFrame, cap: int, rng: np.random.Generator) -> pd.DataFrame:
    users = events["user_id"].unique()
    rng.shuffle(users)
    sizes = events["user_id"].value_counts().reindex(users).to_numpy()
    keep = users[np.cumsum(sizes) <= cap] if len(users) else users
    return events[events["user_id"].isin(keep)].sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def plan_replay(tables: dict[str, pd.DataFrame], s: SimSettings) -> Plan:
    """Cut the data in time: training tables (early period, no cohort user, no new item), then the sampled
    events of every served week (normal weeks: neither; shifted weeks: cohort-heavy, new items allowed).

    The new items are the shifted period's most wanted items (MovieLens has few genuinely new films late on:
    2-5% of later events). Every earlier interaction on them is held back and they join the catalogue when the
    shift starts, so to the platform they are a batch of new releases that only a retrain brings into serving."""
    inter = tables[INTERACTIONS].sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    start = inter["event_timestamp"].min()
    train_end = start + pd.Timedelta(days=7 * s.train_weeks)
    shift_start = train_end + s.serve_weeks * WEEK
    end = shift_start + s.shift_weeks * WEEK
    if end > inter["event_timestamp"].max() + WEEK:
        raise SimulationError(f"the replay ends at {end}, after the data ({inter['event_timestamp'].max()}); "
                              "use fewer weeks")
    cohort = cohort_users(tables[USERS], s.cohort)
    shifted = inter[(inter["event_timestamp"] >= shift_start) & (inter["event_timestamp"] < end)]
    new_items = np.sort(shifted["item_id"].value_counts().index[: s.new_items].to_numpy(np.int64))
    early = inter[(inter["event_timestamp"] < train_end) & ~inter["user_id"].isin(cohort)
                  & ~inter["item_id"].isin(new_items)]
    if early.empty:
        raise SimulationError("no training interactions in the early period: raise train_weeks")
    rng = np.random.default_rng(s.seed)
    weeks = []
    for i in range(s.serve_weeks + s.shift_weeks):
        lo = train_end + i * WEEK
        rows = inter[(inter["event_timestamp"] >= lo) & (inter["event_timestamp"] < lo + WEEK)]
        if lo < shift_start:
            rows = rows[~rows["user_id"].isin(cohort) & ~rows["item_id"].isin(new_items)]
            weeks.append(sample_week(rows, s.events_per_week, s.events_per_user_week, rng))
        else:
            weeks.append(sample_week(rows, s.events_per_week, s.events_per_user_week, rng, cohort, s.cohort_share))
    items = tables[ITEMS]
    launched = items[~items["item_id"].isin(new_items)].reset_index(drop=True)
    train_tables = {INTERACTIONS: early.reset_index(drop=True), USERS: tables[USERS], ITEMS: launched}
    return Plan(start, train_end, shift_start, end, train_tables, weeks, cohort, new_items, items)


# ------------------------------------------------------------------------------------------------- config

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


def with_data(config: Config, tables_dir: str | Path) -> Config:
    """The config whose ingest step reads the canonical tables in `tables_dir` (data.source=files)."""
    cfg = config.dump()
    folder = Path(tables_dir).resolve()
    cfg["data"].update(source="files", interactions_path=str(table_path(folder, INTERACTIONS)),
                       users_path=str(table_path(folder, USERS)), items_path=str(table_path(folder, ITEMS)))
    return Config.model_validate(cfg)


def with_gate(config: Config, min_improvement: float) -> Config:
    cfg = config.dump()
    cfg["evaluate"]["gate_min_improvement"] = min_improvement
    return Config.model_validate(cfg)


# ------------------------------------------------------------------------------------------------ the API
class ApiClient:
    """The replay's HTTP client of the recommendation API (one keep-alive connection; `headers` carry a bearer
    token with the `recommend` and `interactions:write` scopes)."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float = 30.0) -> None:
        import httpx

        self.url = url
        self._http = httpx.Client(base_url=url, timeout=timeout_s, headers=headers)

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            response = self._http.post(route, json=body)
        except httpx.HTTPError as err:
            raise SimulationError(f"POST {self.url}{route} failed: {err}") from err
        if response.status_code != 200:
            raise SimulationError(f"POST {self.url}{route} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def recommend(self, user_id: int, k: int, profile: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"user_id": int(user_id), "k": int(k)}
        if profile:
            body["profile"] = profile
        return self._post("/recommend", body)

    def interaction(self, user_id: int, item_id: int, rating: float | None) -> dict[str, Any]:
        body = {"user_id": int(user_id), "item_id": int(item_id),
                "rating": None if rating is None or pd.isna(rating) else float(rating)}
        return self._post("/interactions", body)

    def close(self) -> None:
        self._http.close()


def user_profiles(users: pd.DataFrame, schema: DatasetSchema) -> dict[int, dict[str, Any]]:
    """The profile a client app would send along: the declared user attributes it knows (used by the API only
    for users the feature store lacks)."""
    names = [n for n in schema.user_attributes if n in users.columns]
    out: dict[int, dict[str, Any]] = {}
    for row in users[["user_id", *names]].to_dict("records"):
        user = int(row.pop("user_id"))  # before the profile is built from what remains
        out[user] = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if v is not None and v == v}
    return out


@dataclass
class ReplayLog:
    """Sim time of everything the replay sent: request ids and (user, item) interactions."""

    requests: dict[str, pd.Timestamp] = field(default_factory=dict)
    interactions: dict[tuple[int, int], pd.Timestamp] = field(default_factory=dict)
    versions: list[tuple[pd.Timestamp, str]] = field(default_factory=list)


def replay_events(client: ApiClient, events: pd.DataFrame, profiles: dict[int, dict[str, Any]], k: int,
                  record: ReplayLog, progress: bool = True, desc: str = "replay") -> dict[str, Any]:
    """For each event in time order: POST /recommend for its user, then POST /interactions with the event."""
    from tqdm.auto import tqdm

    versions: dict[str, int] = {}
    degraded = 0
    for row in tqdm(events.itertuples(index=False), total=len(events), desc=desc, disable=not progress,
                    leave=False):
        answer = client.recommend(row.user_id, k, profiles.get(int(row.user_id)))
        record.requests[answer["request_id"]] = row.event_timestamp
        versions[answer["model_version"]] = versions.get(answer["model_version"], 0) + 1
        degraded += bool(answer["degraded"])
        client.interaction(row.user_id, row.item_id, row.rating)
        record.interactions[(int(row.user_id), int(row.item_id))] = row.event_timestamp
    for version in versions:
        record.versions.append((events["event_timestamp"].max(), version))
    return {"model_versions": versions, "degraded": degraded}


# ------------------------------------------------------------------------------------------ data up to now
def logged_interactions_sim(log_path: str | Path, record: ReplayLog) -> pd.DataFrame:
    """The request log's interactions with their sim time (matched on user and item)."""
    from components.request_log import RequestLog

    with RequestLog(log_path) as request_log:
        logged = request_log.interactions_frame()
    keys = list(zip(logged["user_id"].astype(int), logged["item_id"].astype(int), strict=True))
    sim = pd.Series([record.interactions.get(key) for key in keys], index=logged.index, dtype="object")
    unknown = int(sim.isna().sum())
    if unknown:
        log.warning("%d logged interactions were not sent by this replay; left out", unknown)
    out = logged[sim.notna()].copy()
    out["event_timestamp"] = pd.to_datetime(sim[sim.notna()].tolist(), utc=True).astype("datetime64[us, UTC]")
    return out.reset_index(drop=True)


def tables_up_to_now(plan: Plan, now: pd.Timestamp, log_path: str | Path, record: ReplayLog,
                     out_dir: str | Path) -> dict[str, int]:
    """Write training tables + logged interactions (in sim time) + the catalogue at `now` as canonical tables;
    return row counts."""
    logged = logged_interactions_sim(log_path, record)
    inter = pd.concat([plan.train_tables[INTERACTIONS], logged], ignore_index=True)
    inter = inter.drop_duplicates(["user_id", "item_id", "event_timestamp"]).sort_values("event_timestamp")
    inter["rating"] = inter["rating"].astype("float32")
    tables = {INTERACTIONS: inter.reset_index(drop=True), USERS: plan.train_tables[USERS], ITEMS: plan.items_at(now)}
    write_tables(tables, out_dir)
    return {"interactions": len(inter), "logged": len(logged)}


# ------------------------------------------------------------------------------------------- the pipeline
def run_training(config: Config) -> dict[str, Any]:
    """The training pipeline with the KFP local runner (pipelines.runner)."""
    from pipelines.runner import run_pipeline

    return run_pipeline("training", config)


def deployed_version(config: Config) -> dict[str, Any]:
    """The live Triton version and its model version (deployment history of the model repository)."""
    from components.deploy import read_history

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


# ------------------------------------------------------------------------------------------------ quality
def quality_timeline(log_path: str | Path, record: ReplayLog, k: int, horizon: pd.Timedelta,
                     cohort: np.ndarray) -> pd.DataFrame:
    """Per logged request, in sim time: evaluable, hit@k and ndcg@k against the user's interactions within
    `horizon` after it (monitoring.quality), plus the model version that answered and whether the user is
    in the cohort."""
    from components.request_log import RequestLog
    from monitoring import quality

    with RequestLog(log_path) as request_log:
        requests = request_log.requests_frame()
        recs = request_log.recommendations_frame()
    requests = requests[requests["request_id"].isin(record.requests)].copy()
    requests["ts"] = pd.to_datetime(requests["request_id"].map(record.requests).tolist(), utc=True)
    recs = recs[recs["request_id"].isin(requests["request_id"])].copy()
    recs["ts"] = recs["request_id"].map(dict(zip(requests["request_id"], requests["ts"], strict=True)))
    interactions = logged_interactions_sim(log_path, record)
    per = quality.per_request_quality(requests, recs, interactions, k, horizon,
                                      as_of=interactions["event_timestamp"].max())
    per = per.merge(requests[["request_id", "model_version", "degraded"]], on="request_id")
    per["cohort"] = per["user_id"].isin(cohort)
    return per


def summarise_quality(per: pd.DataFrame) -> dict[str, Any]:
    from monitoring import quality

    return quality.summarise(per)


# ---------------------------------------------------------------------------------------- counterfactual
def histories_at(interactions: pd.DataFrame, requests: pd.DataFrame) -> list[np.ndarray]:
    """Per request (user_id, ts): the user's item ids strictly before ts, oldest first (the state it was served in)."""
    def ns(stamps: pd.Series) -> np.ndarray:
        return pd.to_datetime(stamps, utc=True).dt.as_unit("ns").astype("int64").to_numpy()

    ordered = interactions.sort_values(["user_id", "event_timestamp"], kind="stable")
    by_user = {int(u): (ns(g["event_timestamp"]), g["item_id"].to_numpy(np.int64))
               for u, g in ordered.groupby("user_id", sort=False)}
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    out = []
    for user, at in zip(requests["user_id"].astype(int), ns(requests["ts"]), strict=True):
        times, items = by_user.get(user, empty)
        out.append(items[: np.searchsorted(times, at, side="left")])
    return out


def shadow_recommendations(model_dir: str | Path, requests: pd.DataFrame, users: pd.DataFrame,
                           interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """What the model at `model_dir` would have answered to each request (request_id, user_id, ts): top-k over the
    catalogue it served, from the user's profile and interactions before the request, seen items excluded (the
    batch `recommend` path, whose ranking equals the served one for the same model and state)."""
    from components.model import load_recommender
    from components.recommender import recommend_frame

    recommender = load_recommender(model_dir)
    profiles = requests[["user_id"]].merge(users, on="user_id", how="left")
    profiles["user_id"] = np.arange(len(profiles), dtype=np.int64)  # the request's position keys the answer
    ranked = recommend_frame(recommender, profiles, histories_at(interactions, requests),
                             np.asarray(recommender.item_ids, dtype=np.int64), k, exclude_seen=True)
    position = ranked["user_id"].to_numpy()
    return pd.DataFrame({"request_id": requests["request_id"].to_numpy()[position],
                         "ts": requests["ts"].to_numpy()[position], "rank": ranked["rank"].to_numpy(),
                         "item_id": ranked["item_id"].to_numpy(), "score": ranked["score"].to_numpy()})


def shadow_champion(sim: Simulation, per: pd.DataFrame, cut: pd.Timestamp, horizon: pd.Timedelta) -> tuple[
        dict[str, Any] | None, pd.DataFrame]:
    """The previous champion scored as a shadow on the post-retrain requests (served = the retrained model):
    both rankings against the same later interactions, and the gain with a paired bootstrap CI over the
    evaluable requests. Returns (summary or None when there is nothing to compare, the shadow's per request)."""
    from components.metrics import paired_difference
    from monitoring import quality

    previous = next((p for p in sim.pipelines if p["kind"] == "initial"), None)
    post = per[per["ts"] >= cut].reset_index(drop=True)
    if previous is None or not previous.get("model_dir") or post.empty:
        return None, pd.DataFrame(columns=per.columns)
    logged = logged_interactions_sim(sim.config.serving.request_log, sim.record)
    history = pd.concat([sim.plan.train_tables[INTERACTIONS], logged], ignore_index=True)
    recs = shadow_recommendations(previous["model_dir"], post, sim.plan.train_tables[USERS], history, sim.settings.k)
    shadow = quality.per_request_quality(post[["request_id", "ts", "user_id"]], recs, logged, sim.settings.k, horizon,
                                         as_of=logged["event_timestamp"].max())
    shadow = shadow.merge(post[["request_id", "cohort"]], on="request_id")
    both = post[["request_id", "evaluable", "hit", "ndcg"]].merge(
        shadow[["request_id", "hit", "ndcg"]], on="request_id", suffixes=("", "_shadow"))
    both = both[both["evaluable"].astype(bool)]
    samples, seed = sim.config.evaluate.bootstrap_samples, sim.config.train.seed
    gain: dict[str, Any] = {}
    if len(both):
        gain = {"hit_rate": paired_difference(both["hit"].to_numpy(), both["hit_shadow"].to_numpy(), samples,
                                              seed).as_dict(),
                "ndcg": paired_difference(both["ndcg"].to_numpy(), both["ndcg_shadow"].to_numpy(), samples,
                                          seed).as_dict()}
    served_q, shadow_q = summarise_quality(post), summarise_quality(shadow)
    return {"since": cut.isoformat(), "shadow_model_version": previous.get("model_version"),
            "shadow_model_dir": previous["model_dir"], "requests": len(post), "evaluable_requests": len(both),
            "served": served_q, "shadow": shadow_q, "gain": gain, "bootstrap_samples": samples,
            "note": "served = the retrained model (logged answers); shadow = the previous champion ranking the same "
                    "requests in-process from the interactions before each; gain = served - shadow, paired 95% "
                    "bootstrap CI over the evaluable requests"}, shadow


# --------------------------------------------------------------------------------------------- monitoring
def monitor_week(config: Config, reference_dir: str | Path, week: WeekRecord, previous: WeekRecord,
                 out_dir: Path) -> dict[str, Any]:
    """Monitoring reports over one replayed week of the log (baseline: the week before; explicit wall windows);
    its Evidently snapshots are stamped with the week's end in sim time."""
    from components.monitor import run_monitoring

    return run_monitoring(config, reference_dir, config.serving.request_log, out_dir,
                          baseline_start=previous.wall_start, baseline_end=previous.wall_end,
                          current_start=week.wall_start, current_end=week.wall_end, snapshot_at=week.sim_end)


def decide(config: Config, signals: dict[str, Any], now: pd.Timestamp, out_dir: Path) -> Any:
    """The retraining policy (cooldown + de-duplication) on the week's signals; runs the training pipeline
    (monitoring.trigger) when it fires. `now` is sim time."""
    from monitoring.trigger import decide_and_trigger

    return decide_and_trigger(signals, config, execute=True, now=now, out_dir=out_dir)


# ------------------------------------------------------------------------------------------------ outputs
def weekly_quality(per: pd.DataFrame, plan: Plan, weeks: int) -> pd.DataFrame:
    """Hit rate and NDCG of evaluable requests per replayed week (all users and the cohort)."""
    rows = []
    for i in range(weeks):
        lo = plan.week_start(i)
        sel = per[(per["ts"] >= lo) & (per["ts"] < lo + WEEK)]
        all_s, coh_s = summarise_quality(sel), summarise_quality(sel[sel["cohort"]])
        rows.append({"week": i, "start": lo, "phase": plan.phase(i), "requests": all_s["requests"],
                     "evaluable": all_s["evaluable_requests"], "hit_rate": all_s["hit_rate"], "ndcg": all_s["ndcg"],
                     "cohort_evaluable": coh_s["evaluable_requests"], "cohort_hit_rate": coh_s["hit_rate"],
                     "cohort_ndcg": coh_s["ndcg"]})
    return pd.DataFrame(rows)


def plot_timeline(weekly: pd.DataFrame, plan: Plan, drift_at: pd.Timestamp | None, retrain_at: pd.Timestamp | None,
                  path: Path, k: int, suppressed: list[pd.Timestamp] | None = None) -> Path:
    """Quality per week with the shift, the drift detection, the retrain and suppressed decisions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    mid = weekly["start"] + WEEK / 2
    for col, label, style in (("hit_rate", f"hit rate@{k} (all)", "o-"), ("ndcg", f"NDCG@{k} (all)", "s-"),
                              ("cohort_hit_rate", f"hit rate@{k} (cohort)", "o--"),
                              ("shadow_hit_rate", f"hit rate@{k}: previous champion as a shadow, same requests",
                               "x:")):
        if col in weekly and weekly[col].notna().any():
            ax.plot(mid, weekly[col].astype(float), style, label=label)
    ax.axvspan(plan.shift_start, plan.end, color="#f4e3c1", alpha=0.5, label="shifted traffic")
    if retrain_at is not None:
        ax.axvline(retrain_at, color="#1b7f3b", linewidth=4, alpha=0.6, label="retrained model live")
    if drift_at is not None:
        ax.axvline(drift_at, color="#b00020", linestyle="--", label="drift detected: retrain triggered")
    for n, at in enumerate(suppressed or []):
        ax.axvline(at, color="#777777", linestyle=":", label="signal fired, retrain suppressed" if n == 0 else None)
    ax.set_xlabel("time in the data (week of replay)")
    ax.set_ylabel("online quality")
    ax.set_title("Replay: online quality of logged recommendations vs the interactions that followed")
    ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_index(root: Path, summary: dict[str, Any], weeks: list[WeekRecord], weekly: pd.DataFrame,
                plot: Path) -> Path:
    """index.html: the timeline, the summary and one row per week linking its monitoring report."""
    q = weekly.set_index("week")
    rows = []
    for w in weeks:
        link = (f'<a href="{escape(str(Path(w.report_dir).relative_to(root)))}/index.html">report</a>'
                if w.report_dir else '<span class="muted">none</span>')
        dec = w.decision or {}
        verdict = ("RETRAIN" if dec.get("retrain") else f"suppressed ({dec['suppressed_by']})"
                   if dec.get("suppressed_by") else "no retrain") if dec else "-"
        rows.append((w.index, w.phase, w.sim_start[:10], w.events, ", ".join(w.model_versions),
                     q.loc[w.index, "hit_rate"], q.loc[w.index, "ndcg"], w.signals.get("drift_share"),
                     ", ".join(w.drifted_columns), escape(verdict), link))
    body = table(["week", "phase", "starts", "events", "model", "hit rate", "NDCG", "drift share",
                  "drifted features", "decision", "monitoring"], rows, raw_columns=(9, 10))
    html = page("Closed-loop replay", "The data replayed in time order through the API; monitoring, retraining "
                "policy, training pipeline and redeploy as in production.", [
                    ("Timeline", f'<img alt="timeline" src="{escape(plot.name)}">'),
                    ("Result", table(["what", "value"], _result_rows(summary))),
                    ("Online quality", _quality_table(summary)),
                    ("The retrain against the previous champion (shadow, same requests)",
                     _counterfactual_table(summary.get("counterfactual"))),
                    ("Pipeline runs and their gate", _pipelines_table(summary["pipelines"])),
                    ("Weeks", body + '<p>Every figure: <a href="summary.json">summary.json</a></p>')])
    path = root / "index.html"
    path.write_text(html, encoding="utf-8")
    return path


def _ci(est: dict[str, float] | None) -> str:
    return "n/a" if not est else f"{est['value']:+.4f} ({est['low']:+.4f} .. {est['high']:+.4f})"


def _result_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    first = summary.get("first_model") or {}
    gate = first.get("gate") or {}
    promoted = summary.get("promoted_version") or {}
    initial = summary.get("initial_version") or {}
    return [
        ("shift starts", summary["shift_starts_at"][:10]),
        ("drift detected", f"week {summary['drift_detected_week']} ({summary['drift_detected_at'][:10]})"
         if summary.get("drift_detected_at") else None),
        ("retrains triggered", summary["retrains_triggered"]),
        ("decisions suppressed", ", ".join(f"week {w}: {why}" for w, why in summary["decisions_suppressed"].items())
         or "none"),
        ("first model", f"Triton v{initial.get('triton_version')} ({initial.get('model_version')})"),
        ("first model's gate", (gate.get("reason", "n/a") + (" (served anyway: the API serves two-tower bundles "
                                                              "only)" if first.get("served_despite_gate") else ""))),
        ("retrained model live", f"Triton v{promoted.get('triton_version')} ({promoted.get('model_version')}) "
         f"from {summary['retrain_live_at'][:10]}" if promoted and summary.get("retrain_live_at") else "none"),
        ("recovered (post-retrain hit rate above pre-retrain)", summary["recovered"]),
        ("Evidently UI", (summary.get("evidently") or {}).get("ui")),
        ("run time", f"{summary['seconds']:.0f} s"),
    ]


def _quality_table(summary: dict[str, Any]) -> str:
    q = summary["quality"]
    names = [("before_shift", "before the shift"), ("pre_retrain_shifted", "shifted, before the retrain"),
             ("post_retrain_shifted", "shifted, after the retrain"),
             ("pre_retrain_shifted_cohort", "shifted, before the retrain: cohort"),
             ("post_retrain_shifted_cohort", "shifted, after the retrain: cohort")]
    rows = [(label, q[key]["requests"], q[key]["evaluable_requests"], q[key]["hit_rate"], q[key]["ndcg"])
            for key, label in names if key in q]
    return (table(["traffic", "requests", "evaluable", f"hit rate@{q['k']}", f"NDCG@{q['k']}"], rows)
            + f'<p class="muted">outcome: the user\'s interactions within {q["horizon_hours"]:.0f} h of data time '
            "after the request</p>")


def _counterfactual_table(c: dict[str, Any] | None) -> str:
    if not c:
        return '<p class="muted">no retrain went live: nothing to compare</p>'
    rows = [("served: the retrained model", c["served"]["hit_rate"], c["served"]["ndcg"]),
            (f"shadow: the previous champion ({c['shadow_model_version']})", c["shadow"]["hit_rate"],
             c["shadow"]["ndcg"]),
            ("gain (paired 95% bootstrap CI)", _ci(c["gain"].get("hit_rate")), _ci(c["gain"].get("ndcg")))]
    return (table(["", "hit rate", "NDCG"], rows)
            + f'<p class="muted">{c["evaluable_requests"]} evaluable of {c["requests"]} requests since '
            f'{c["since"][:10]}; {escape(c["note"])}</p>')


def _pipelines_table(pipelines: list[dict[str, Any]]) -> str:
    rows = []
    for p in pipelines:
        gate = p.get("gate") or {}
        rows.append((p["kind"], p.get("week", ""), gate.get("metric"), gate.get("candidate"),
                     f"{gate.get('champion_name', '')} ({gate.get('champion_source', '')})" if gate else None,
                     gate.get("champion"), _ci(gate.get("difference")) if gate.get("difference") else None,
                     "promote" if gate.get("promote") else "keep the champion" if gate else None,
                     p.get("triton_version"), p.get("seconds")))
    return table(["run", "week", "gate metric", "candidate", "champion", "champion value",
                  "paired CI of the difference", "gate", "live Triton version", "seconds"], rows)


# --------------------------------------------------------------------------------------------- the loop
@dataclass
class Simulation:
    """State of one run (see `run_simulation`)."""

    config: Config
    settings: SimSettings
    root: Path
    plan: Plan
    record: ReplayLog = field(default_factory=ReplayLog)
    weeks: list[WeekRecord] = field(default_factory=list)
    pipelines: list[dict[str, Any]] = field(default_factory=list)
    api_pid: int | None = None
    monitor_config: Config | None = None  # the config with the quality horizon on the log's (wall) clock


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


def _import_parts() -> None:
    """Import every part of the loop up front (one consistent code base for the whole run)."""
    import components.deploy  # noqa: F401
    import components.evaluate  # noqa: F401
    import components.monitor  # noqa: F401
    import components.registry  # noqa: F401
    import monitoring.quality  # noqa: F401
    import monitoring.trigger  # noqa: F401
    import pipelines.runner  # noqa: F401
    import recsys.serve_api  # noqa: F401
    import serving.service  # noqa: F401
    import serving.triton_client  # noqa: F401
    import serving.triton_server  # noqa: F401


def _start_serving(sim: Simulation) -> ApiClient:
    from recsys.serve_api import api_url, auth_headers, start_api

    sim.api_pid = start_api(sim.config, detach=False)
    return ApiClient(api_url(sim.config), auth_headers(sim.config))


def _stop_serving(sim: Simulation) -> None:
    from recsys.serve_api import stop_pid
    from serving import triton_server as ts

    if sim.api_pid is not None:
        stop_pid(sim.api_pid)
        sim.api_pid = None
    ts.stop_detached(ts.settings_from_config(sim.config))


def _train_initial(sim: Simulation) -> dict[str, Any]:
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


def _replay_week(sim: Simulation, client: ApiClient, i: int, profiles: dict[int, dict[str, Any]],
                 progress: bool) -> WeekRecord:
    events = sim.plan.weeks[i]
    wall_start = datetime.now(UTC)
    t0 = time.monotonic()
    out = replay_events(client, events, profiles, sim.settings.k, sim.record, progress,
                        desc=f"week {i} ({sim.plan.phase(i)})")
    time.sleep(0.01)
    lo = sim.plan.week_start(i)
    return WeekRecord(
        index=i, phase=sim.plan.phase(i), sim_start=lo.isoformat(), sim_end=(lo + WEEK).isoformat(),
        wall_start=wall_start.isoformat(), wall_end=datetime.now(UTC).isoformat(), events=len(events),
        cohort_events=int(events["user_id"].isin(sim.plan.cohort_users).sum()),
        new_item_events=int(events["item_id"].isin(sim.plan.new_items).sum()),
        model_versions=out["model_versions"], degraded=out["degraded"], seconds=round(time.monotonic() - t0, 1))


def _monitor_and_decide(sim: Simulation, week: WeekRecord, reference_dir: Path) -> Path | None:
    """Reports + policy for the week; returns the new training-tables folder when a retrain went live."""
    from serving.triton_client import RecommenderClient

    previous = sim.weeks[-2]
    out = Path(sim.config.monitoring.reports_dir) / f"week_{week.index:02d}"
    now = pd.Timestamp(week.sim_end)
    folder = sim.root / "data" / f"week_{week.index + 1:02d}"
    counts = tables_up_to_now(sim.plan, now, sim.config.serving.request_log, sim.record, folder)
    if sim.monitor_config is None:
        sim.monitor_config = scaled_horizon(sim.config, sim.weeks[0])
    summary = monitor_week(sim.monitor_config, reference_dir, week, previous, out)
    week.report_dir, week.signals = str(out), summary["signals"]
    week.drifted_columns = [f"{name}.{col}" for name, rep in summary["drift"]["reports"].items()
                            for col, c in rep.get("columns", {}).items() if c["drifted"]]
    before = deployed_version(sim.config)
    decision = decide(with_data(sim.config, folder), summary["signals"], now, out)
    week.decision = {k: decision.as_dict()[k] for k in ("decision_id", "at", "retrain", "reason", "suppressed_by",
                                                        "fired", "outcome")}
    if not decision.retrain:
        return None
    outcome = decision.outcome or {}
    result = {"run_dir": outcome.get("run_dir"), "artifacts": {}}
    if outcome.get("run_dir"):
        from pipelines.runner import _task_artifacts  # where each artifact of that run landed

        result["artifacts"] = _task_artifacts(Path(outcome["run_dir"]))
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


SIMULATION_MARKERS = ("summary.json", "request_log.sqlite", "policy", "kfp")


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
        _train_initial(sim)
        client = _start_serving(sim)
        try:
            for i in range(len(plan.weeks)):
                week = _replay_week(sim, client, i, profiles, progress)
                sim.weeks.append(week)
                if i == 0:
                    continue
                new_reference = _monitor_and_decide(sim, week, reference)
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


def finish(sim: Simulation, retrain_live_at: pd.Timestamp | None, seconds: float) -> dict[str, Any]:
    """Quality timeline, plot, index page and summary.json."""
    from monitoring.workspace import project_name, workspace_dir

    plan, cfg = sim.plan, sim.config
    horizon = pd.Timedelta(hours=cfg.monitoring.quality_horizon_hours)
    per = quality_timeline(cfg.serving.request_log, sim.record, sim.settings.k, horizon, plan.cohort_users)
    weekly = weekly_quality(per, plan, len(sim.weeks))
    counterfactual, shadow = (shadow_champion(sim, per, retrain_live_at, horizon) if retrain_live_at is not None
                              else (None, per.iloc[:0]))
    weekly["shadow_hit_rate"] = (weekly_quality(shadow, plan, len(sim.weeks))["hit_rate"] if not shadow.empty
                                 else None)
    drift_week = next((w for w in sim.weeks if any(f["name"] == "drift_share" for f in (w.decision or {})
                                                   .get("fired", []))), None)
    drift_at = pd.Timestamp(drift_week.sim_end) if drift_week else None
    shifted = per[per["ts"] >= plan.shift_start]
    cut = retrain_live_at if retrain_live_at is not None else plan.end
    pre, post = shifted[shifted["ts"] < cut], shifted[shifted["ts"] >= cut]
    promoted = [p for p in sim.pipelines if p["kind"] == "retrain" and p.get("promoted")]
    quality = {
        "k": sim.settings.k, "horizon_hours": cfg.monitoring.quality_horizon_hours,
        "pre_retrain_shifted": summarise_quality(pre), "post_retrain_shifted": summarise_quality(post),
        "pre_retrain_shifted_cohort": summarise_quality(pre[pre["cohort"]]),
        "post_retrain_shifted_cohort": summarise_quality(post[post["cohort"]]),
        "before_shift": summarise_quality(per[per["ts"] < plan.shift_start]),
    }
    pre_hr, post_hr = quality["pre_retrain_shifted"]["hit_rate"], quality["post_retrain_shifted"]["hit_rate"]
    summary = {
        "drift_detected_at": drift_at.isoformat() if drift_at is not None else None,
        "drift_detected_week": drift_week.index if drift_week else None,
        "shift_starts_at": plan.shift_start.isoformat(),
        "retrains_triggered": sum(bool((w.decision or {}).get("retrain")) for w in sim.weeks),
        "decisions_suppressed": {str(w.index): w.decision["suppressed_by"] for w in sim.weeks
                                 if w.decision and w.decision.get("suppressed_by")},
        "promoted_version": ({"triton_version": promoted[-1]["triton_version"],
                              "model_version": promoted[-1]["model_version"],
                              "registry_version": (promoted[-1].get("champion") or {}).get("version")}
                             if promoted else None),
        "initial_version": {k: sim.pipelines[0].get(k) for k in ("triton_version", "model_version")}
        if sim.pipelines else None,
        "retrain_live_at": retrain_live_at.isoformat() if retrain_live_at is not None else None,
        "quality": quality,
        "recovered": bool(pre_hr is not None and post_hr is not None and post_hr > pre_hr),
        "counterfactual": counterfactual,
        "first_model": ({k: sim.pipelines[0].get(k) for k in ("gate", "served_despite_gate", "model_version")}
                        if sim.pipelines else None),
        "evidently": {"workspace": str(workspace_dir(cfg)), "project": project_name(cfg),
                      "ui": f"recsys monitor ui --workspace {workspace_dir(cfg)}"},
        "settings": asdict(sim.settings),
        "plan": {"train_end": plan.train_end.isoformat(), "end": plan.end.isoformat(),
                 "training_interactions": len(plan.train_tables[INTERACTIONS]),
                 "replayed_events": sum(len(w) for w in plan.weeks), "cohort_users": len(plan.cohort_users),
                 "new_items": len(plan.new_items)},
        "pipelines": sim.pipelines,
        "weekly_quality": json.loads(weekly.to_json(orient="records", date_format="iso")),
        "weeks": [asdict(w) for w in sim.weeks],
        "seconds": round(seconds, 1),
    }
    suppressed = [pd.Timestamp(w.sim_end) for w in sim.weeks if w.decision and w.decision.get("suppressed_by")]
    plot = plot_timeline(weekly, plan, drift_at, retrain_live_at, sim.root / "timeline.png", sim.settings.k,
                         suppressed)
    (sim.root / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    summary["index"] = str(write_index(sim.root, summary, sim.weeks, weekly, plot))
    summary["timeline"] = str(plot)
    return summary
