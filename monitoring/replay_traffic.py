"""The replay's traffic: each planned event sent through the real API (a recommendation request, then the
interaction), the sim time of everything sent, and the tables up to now (training tables + logged interactions)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from components.dataset import DatasetSchema
from components.schemas import INTERACTIONS, ITEMS, USERS, write_tables
from monitoring.replay_world import WEEK, Plan, ReplayLog, Simulation, SimulationError, WeekRecord

log = logging.getLogger(__name__)


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


def replay_week(sim: Simulation, client: ApiClient, i: int, profiles: dict[int, dict[str, Any]],
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


def logged_interactions_sim(log_path: str | Path, record: ReplayLog) -> pd.DataFrame:
    """The request log's interactions with their sim time (matched on user and item)."""
    from components.request_logs import open_request_log

    with open_request_log(log_path) as request_log:
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
