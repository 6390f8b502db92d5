"""The replay's world: its settings, the plan (training tables and the replayed events of every week, cut in
time, with the held-out cohort and the held-back new items), and the state of one run."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Config
from components.dataset import COHORT_EXPRESSION, DatasetSchema
from components.errors import RecsysError
from components.schemas import INTERACTIONS, ITEMS, USERS

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
    cohort: str | None = None  # users held out until the shift: "<column><op><value>" (None: the declared one)
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


@dataclass
class ReplayLog:
    """Sim time of everything the replay sent: request ids and (user, item) interactions."""

    requests: dict[str, pd.Timestamp] = field(default_factory=dict)
    interactions: dict[tuple[int, int], pd.Timestamp] = field(default_factory=dict)
    versions: list[tuple[pd.Timestamp, str]] = field(default_factory=list)


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


def parse_cohort(spec: str) -> tuple[str, Callable[[Any, Any], Any], str]:
    """'tier=gold', 'tenure_days<90' -> (column, operator, value): a cohort of users by one of their attributes."""
    match = COHORT_EXPRESSION.fullmatch(spec)
    if not match:
        raise SimulationError(f"cohort {spec!r} is not '<column><op><value>' (op one of = != < <= > >=)")
    return match.group(1), _OPS[match.group(2)], match.group(3)


def with_declared_cohort(settings: SimSettings, dataset: DatasetSchema) -> SimSettings:
    """`settings` with the data set's declared `replay_cohort` when no cohort was given."""
    if settings.cohort is not None:
        return settings
    if dataset.replay_cohort is None:
        raise SimulationError(f"no cohort to hold out: data set {dataset.name!r} declares no replay_cohort; pass "
                              "--cohort '<attribute><op><value>' or declare dataset.replay_cohort")
    return replace(settings, cohort=dataset.replay_cohort)


def cohort_users(users: pd.DataFrame, spec: str | None) -> np.ndarray:
    """Ids of the users the cohort expression selects."""
    if spec is None:
        raise SimulationError("no cohort expression given (see with_declared_cohort)")
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
