"""A small but complete serving stack for the API tests and benchmark: Feast (SQLite, materialized), a real
Triton server with a deployed bundle, and the BentoML API, all on free loopback ports under one folder."""

import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import Config
from components.deploy import deploy_bundle, restore_active
from components.features import build_feature_store, materialize
from recsys.serve_api import api_url, auth_headers, start_api, stop_pid
from serving import triton_server as ts
from tests.serving.bundle_factory import GENDERS, OCCUPATIONS
from tests.serving.conftest import free_port, serving_config

GENRES = ["Drama", "Comedy", "Action", "Horror", "Romance", "Sci-Fi"]
NOW = datetime.now(UTC).replace(microsecond=0)


def synthetic_tables(item_ids: np.ndarray, n_users: int = 30, per_user: int = 12, seed: int = 0) -> dict:
    """Canonical tables over the bundle's catalogue: users 1..n_users, events in the last 40 days."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(NOW - timedelta(days=40))
    rows = []
    weights = 1.0 / np.arange(1, len(item_ids) + 1) ** 0.8  # a popularity skew
    weights /= weights.sum()
    for user in range(1, n_users + 1):
        items = rng.choice(item_ids, size=per_user, replace=False, p=weights)
        times = np.sort(rng.uniform(0, 39 * 86400, size=per_user))
        for item, sec in zip(items, times, strict=True):
            rows.append((user, int(item), float(rng.integers(1, 6)), start + pd.Timedelta(seconds=float(sec))))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "event_timestamp"])
    interactions["rating"] = interactions["rating"].astype("float32")
    interactions["event_timestamp"] = interactions["event_timestamp"].dt.floor("us").astype("datetime64[us, UTC]")
    created = (start - pd.Timedelta(days=30)).floor("us")
    users = pd.DataFrame({
        "user_id": np.arange(1, n_users + 1, dtype=np.int64),
        "age": rng.integers(15, 70, n_users),
        "gender": rng.choice(GENDERS, n_users),
        "occupation": rng.choice([*OCCUPATIONS, "writer"], n_users),  # "writer" is not in the model's vocab
        "zip_code": ["00000"] * n_users,
        "created_timestamp": created,
    })
    n = len(item_ids)
    genres = ["|".join(rng.choice(GENRES, size=int(rng.integers(1, 3)), replace=False)) for _ in range(n)]
    items = pd.DataFrame({"item_id": np.asarray(item_ids, np.int64), "title": [f"Movie {i}" for i in item_ids],
                          "year": rng.integers(1950, 2001, n), "genres": genres, "created_timestamp": created})
    items["text"] = items["title"] + ". Genres: " + items["genres"] + "."
    for frame in (users, items):
        frame["created_timestamp"] = frame["created_timestamp"].astype("datetime64[us, UTC]")
    return {"interactions": interactions, "users": users, "items": items}


@dataclass
class Stack:
    config: Config
    bundle: Path
    tables: dict
    triton: ts.TritonServer
    api_pid: int | None = None

    @property
    def url(self) -> str:
        return api_url(self.config)

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header of the admin key the API's first start created (every scope)."""
        return auth_headers(self.config)

    def restart_triton(self) -> None:
        """Start Triton again on the same ports and load the live version."""
        self.triton = ts.start_server(ts.settings_from_config(self.config))
        restore_active(self.config)

    def worker_pids(self) -> list[int]:
        """Child processes of the API server (its BentoML worker)."""
        if self.api_pid is None:
            return []
        children = Path(f"/proc/{self.api_pid}/task/{self.api_pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []

    def kill_api(self) -> None:
        """SIGKILL the API server and its worker (a crash: no shutdown code runs)."""
        for pid in [*self.worker_pids(), self.api_pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(self.api_pid, 0)
        except ChildProcessError:
            pass
        self.api_pid = None

    def start_api(self) -> int:
        self.api_pid = start_api(self.config, detach=False)
        return self.api_pid

    def stop(self) -> None:
        if self.api_pid is not None:
            stop_pid(self.api_pid)
            self.api_pid = None
        self.triton.stop()


def build_stack(root: Path, bundle: Path, n_users: int = 30, per_user: int = 12, api: bool = True,
                overrides: dict | None = None) -> Stack:
    """Feature store from synthetic tables over the bundle's items, Triton with the bundle deployed, the API."""
    root = Path(root)
    config = serving_config(root)
    config.features.data_dir = root / "features"
    config.features.last_n_items = 8
    config.serving.api_port = free_port()
    config.serving.request_log = root / "request_log.sqlite"
    config.serving.grpc_timeout_s = 2.0
    for dotted, value in (overrides or {}).items():  # "section.key" or deeper ("serving.auth.jwt.issuer")
        *parents, key = dotted.split(".")
        node = config
        for name in parents:
            node = getattr(node, name)
        setattr(node, key, value)
    tables = synthetic_tables(np.load(bundle / "item_ids.npy"), n_users, per_user)
    store = build_feature_store(config, tables)
    materialize(store, end=NOW)
    triton = ts.start_server(ts.settings_from_config(config))
    stack = Stack(config, bundle, tables, triton)
    try:
        deploy_bundle(config, bundle)
        if api:
            stack.start_api()
    except BaseException:
        stack.stop()
        raise
    return stack
