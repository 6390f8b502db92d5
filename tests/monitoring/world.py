"""A small simulated recommender world: canonical tables (the training reference) and a request log.

The baseline and current log windows follow the reference distribution, or (shift=True) the current window
changes: older users request, ratings fall, consumption moves to the long tail, recommendations move to the
long tail with different scores, and women get fewer hits (a quality drop and a fairness gap).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from components.config import Config, load_config
from components.request_log import RequestLog, RequestRecord
from components.request_logs import open_request_log
from components.schemas import write_tables

T0 = pd.Timestamp("2026-01-01", tz="UTC")
N_USERS, N_ITEMS, OCCUPATIONS = 1000, 300, ["artist", "doctor", "engineer", "student", "writer"]
REF_DAYS, WINDOW_DAYS = 28, 7


def world_config(root: Path, **monitoring: object) -> Config:
    sets = [f"paths.artifacts_dir={root / 'artifacts'}", f"monitoring.state_path={root / 'state' / 'policy.json'}",
            f"monitoring.reports_dir={root / 'reports'}", f"serving.request_log={root / 'log.sqlite'}",
            "monitoring.window_hours=168", "monitoring.quality_horizon_hours=24", "evaluate.cold_start_items=5"]
    sets += [f"monitoring.{k}={v}" for k, v in monitoring.items()]
    return load_config(overrides=sets)


def _users(rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": np.arange(1, N_USERS + 1, dtype=np.int64),
        "age": rng.integers(18, 45, N_USERS).astype(np.int64),
        "gender": rng.choice(["F", "M"], N_USERS),
        "occupation": rng.choice(OCCUPATIONS, N_USERS),
        "zip_code": "00000",
        "created_timestamp": T0,
    }).astype({"created_timestamp": "datetime64[us, UTC]"})


def _items() -> pd.DataFrame:
    ids = np.arange(1, N_ITEMS + 1, dtype=np.int64)
    return pd.DataFrame({"item_id": ids, "title": [f"item {i}" for i in ids], "text": [f"text {i}" for i in ids],
                         "created_timestamp": T0}).astype({"created_timestamp": "datetime64[us, UTC]"})


def _popularity(tail: bool) -> np.ndarray:
    """Zipf-like popularity over item ids 1..N (low id = popular); tail=True favours the least popular."""
    weights = 1.0 / np.arange(1, N_ITEMS + 1) ** 1.1
    weights = weights[::-1] if tail else weights
    return weights / weights.sum()


def _session(rng: np.random.Generator, user: pd.Series, ts: pd.Timestamp, shift: bool) -> tuple[np.ndarray,
                                                                                                np.ndarray, list]:
    """One recommendation request and the day of interactions after it: (items, scores, events)."""
    ids = np.arange(1, N_ITEMS + 1)
    pop = _popularity(shift)
    items = rng.choice(ids, 10, replace=False, p=pop)
    scores = np.sort(rng.normal(2.0 if shift else 5.0, 1.0, 10))[::-1]
    others = pop.copy()
    others[items - 1] = 0.0  # what the user consumes besides the recommendations
    others /= others.sum()
    n = max(1, int(rng.binomial(12, 0.25)))
    consumed = rng.choice(ids, n, p=others)
    if rng.random() < (0.1 if shift and user["gender"] == "F" else 0.6):
        consumed[0] = items[rng.integers(0, 3)]
    ratings = np.clip(np.round(rng.normal(2.5 if shift else 3.6, 0.9, n)), 1, 5)
    offsets = np.sort(rng.uniform(60, 86400 - 60, n))
    events = [(int(user["user_id"]), int(it), float(r), ts + pd.Timedelta(seconds=float(o)))
              for it, r, o in zip(consumed, ratings, offsets, strict=True)]
    return items, scores, events


def _session_time(rng: np.random.Generator, start: pd.Timestamp) -> pd.Timestamp:
    return (start + pd.Timedelta(seconds=float(rng.uniform(0, (WINDOW_DAYS - 1.5) * 86400)))).floor("us")


def _reference(rng: np.random.Generator, users: pd.DataFrame) -> pd.DataFrame:
    """The training period: the same sessions, each user active in a week with probability 0.4."""
    events = []
    for week in range(REF_DAYS // WINDOW_DAYS):
        start = T0 + pd.Timedelta(days=week * WINDOW_DAYS)
        for _, user in users[rng.random(len(users)) < 0.4].iterrows():
            events += _session(rng, user, _session_time(rng, start), False)[2]
    return _frame(events)


def _frame(events: list) -> pd.DataFrame:
    df = pd.DataFrame(events, columns=["user_id", "item_id", "rating", "event_timestamp"])
    return df.astype({"user_id": "int64", "item_id": "int64", "rating": "float32",
                      "event_timestamp": "datetime64[us, UTC]"})


def _log_window(log: RequestLog, rng: np.random.Generator, users: pd.DataFrame, start: pd.Timestamp, shift: bool,
                prefix: str) -> None:
    """Requests of a window, and the interactions that followed each."""
    req_users = users if not shift else users[users["age"] >= 30]
    chosen = req_users.sample(n=min(400, len(req_users)), random_state=int(rng.integers(1 << 30)))
    follow, requests = [], []
    for i, (_, user) in enumerate(chosen.iterrows()):
        ts = _session_time(rng, start)
        items, scores, events = _session(rng, user, ts, shift)
        profile = {"age": int(user["age"]) + (15 if shift else 0), "gender": user["gender"],
                   "occupation": user["occupation"]}
        requests.append(RequestRecord(f"{prefix}-{i}", ts.to_pydatetime(), int(user["user_id"]), 10, True, {},
                                      profile, [int(x) for x in items], [float(s) for s in scores], "v1", False,
                                      False, 5.0))
        follow += events
    log.append_requests(requests)  # one transaction: the per-request fsync would dominate the test's time
    log.append_interactions(_frame(follow))


def make_world(root: Path, shift: bool, seed: int = 0) -> tuple[Path, Path]:
    """Write canonical tables under root/canonical and the request log root/log.sqlite; return both paths."""
    rng = np.random.default_rng(seed)
    users = _users(rng)
    reference = _reference(rng, users)
    canonical = write_tables({"interactions": reference, "users": users, "items": _items()}, root / "canonical")
    log_path = root / "log.sqlite"
    with open_request_log(log_path) as log:
        _log_window(log, rng, users, T0 + pd.Timedelta(days=REF_DAYS), False, "base")
        _log_window(log, rng, users, T0 + pd.Timedelta(days=REF_DAYS + WINDOW_DAYS), shift, "cur")
    return canonical, log_path


def window_bounds() -> dict[str, pd.Timestamp]:
    base = T0 + pd.Timedelta(days=REF_DAYS)
    return {"reference_end": base, "baseline_start": base, "baseline_end": base + pd.Timedelta(days=WINDOW_DAYS),
            "current_start": base + pd.Timedelta(days=WINDOW_DAYS),
            "current_end": base + pd.Timedelta(days=2 * WINDOW_DAYS)}


def item_embeddings(folder: Path, dim: int = 8, seed: int = 1) -> Path:
    """Item vectors whose direction follows popularity, so a move to the long tail moves the vectors."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, N_ITEMS + 1, dtype=np.int64)
    vectors = rng.normal(size=(N_ITEMS, dim)).astype(np.float32)
    vectors[:, 0] += np.linspace(2.0, -2.0, N_ITEMS)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "item_ids.npy", ids)
    np.save(folder / "item_embeddings.npy", vectors)
    return folder
