"""Feature step (Feast): the feature repository over the feature tables (components.feature_tables),
point-in-time training examples (contract C1) and materialization; the online look-ups and pushes of new
interactions live in components.features_online.

One place for the logic: the CLI (`recsys features`), the KFP component `features_op` and the serving API
call these functions. Feast is imported lazily (it takes seconds); the definitions live in
`<features.repo_path>/definitions.py` and are loaded from there.
"""

import importlib.util
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from kfp.dsl import Dataset, Input, Metrics, Output

from components.config import Config, Features
from components.dataset import Attribute
from components.feature_tables import (
    POPULARITY_VIEW,
    UNKNOWN,
    JoinedView,
    duckdb_feature_tables,
    duckdb_training_examples,
    spark_feature_tables,
    spark_session,
    spark_training_examples,
    utc_us,
)
from components.features_online import SECONDS_PER_DAY, FeatureStoreError, int_list, online_features
from components.item_events import write_item_events
from components.kfp_support import step
from components.schemas import INTERACTIONS, ITEMS, USERS, table_path, write_tables

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_FILE = "examples.parquet"
ONE_US = pd.Timedelta(microseconds=1)
REDIS_PASSWORD_SECRET = "recsys-redis"  # the cluster's Secret (key `password`), k8s/base/redis.yaml


# --------------------------------------------------------------------------------------------- locations
def _resolve(path: Path) -> Path:
    """A relative path from the config: against the working directory, else against the project root."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (PROJECT_ROOT / path).resolve()


def repo_dir(config: Config) -> Path:
    """The Feast repository folder (feature_store.yaml + definitions.py)."""
    folder = _resolve(config.features.repo_path)
    if not (folder / "definitions.py").is_file():
        raise FeatureStoreError(f"no Feast definitions at {folder / 'definitions.py'} (features.repo_path)")
    return folder


def feature_data_dir(config: Config) -> Path:
    """Where feature tables, the registry and the SQLite online store live (features.data_dir)."""
    if config.features.data_dir is not None:
        return Path(config.features.data_dir).resolve()
    return repo_dir(config) / "data"


def load_definitions(config: Config) -> ModuleType:
    """Import `<repo>/definitions.py` (which imports nothing of ours) as a module."""
    path = repo_dir(config) / "definitions.py"
    name = f"recsys_feature_definitions_{abs(hash(str(path)))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def redis_connection_string(features: Features) -> str:
    """features.redis_connection plus the password from $<features.redis_password_env> when set: the password
    lives in the environment only (a Secret on the cluster), never in a config file, the pipeline or a log."""
    password = os.environ.get(features.redis_password_env, "")
    if not password:
        return features.redis_connection
    if "," in password:
        raise FeatureStoreError(f"${features.redis_password_env} holds a comma, which a Redis connection string "
                                "cannot carry: choose another password (e.g. `openssl rand -hex 24`)")
    return f"{features.redis_connection},password={json.dumps(password)}"  # quoted: Feast JSON-decodes values


def repo_config(config: Config) -> Any:
    """Feast RepoConfig for the configured online store (sqlite or redis); offline store DuckDB over parquet."""
    from feast import RepoConfig

    data_dir = feature_data_dir(config)
    if config.features.online_store == "redis":
        online = {"type": "redis", "connection_string": redis_connection_string(config.features)}
    else:
        online = {"type": "sqlite", "path": str(data_dir / "online_store.db")}
    return RepoConfig(project=load_definitions(config).PROJECT, provider="local",
                      registry=str(data_dir / "registry.db"), online_store=online,
                      offline_store={"type": "duckdb"}, repo_path=data_dir, entity_key_serialization_version=3)


def open_store(config: Config) -> "FeatureStore":
    """The configured FeatureStore (apply_repository must have run once for its registry)."""
    from feast import FeatureStore

    logging.getLogger("feast.infra.registry.registry").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated", category=DeprecationWarning)
    feature_data_dir(config).mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(config))


def apply_repository(config: Config) -> "FeatureStore":
    """Register entities, views and services (sources in the feature data dir) and create online tables."""
    defs = load_definitions(config)
    store = open_store(config)
    windows = tuple(config.features.popularity_windows_days)
    data = feature_data_dir(config)
    manifest = defs.fields_manifest(data)
    user_fields = tuple(tuple(f) for f in manifest["user_fields"])
    item_fields = tuple(tuple(f) for f in manifest["item_fields"])
    store.apply(defs.build_definitions(str(data), windows, user_fields, item_fields))
    log.info("applied Feast repository %s (online store: %s, windows %s d)", repo_dir(config),
             config.features.online_store, list(windows))
    return store


def write_feature_tables(config: Config, canonical: str | Path | dict[str, pd.DataFrame]) -> dict[str, int]:
    """The feature tables of a canonical dataset folder (or in-memory tables) into the feature data dir, computed
    by the configured engine (features.engine: duckdb here, spark on a cluster). Returns rows per table."""
    cfg = config.features
    out = feature_data_dir(config)
    with tempfile.TemporaryDirectory(prefix="canonical-") as tmp:
        if isinstance(canonical, dict):
            canonical = write_tables(canonical, Path(tmp))
        if cfg.engine == "spark":
            counts = spark_feature_tables(spark_session(cfg.spark_master), canonical, out, config.dataset,
                                          cfg.last_n_items, cfg.popularity_windows_days)
        else:
            counts = duckdb_feature_tables(canonical, out, config.dataset, cfg.last_n_items,
                                           cfg.popularity_windows_days, memory_limit=cfg.duckdb_memory_limit)
        write_item_events(table_path(canonical, INTERACTIONS), out)  # what the API's popularity priors count
    defs = load_definitions(config)
    manifest = defs.fields_manifest(out)
    (out / defs.FIELDS_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return counts


def build_feature_store(config: Config, canonical: str | Path | dict[str, pd.DataFrame]) -> "FeatureStore":
    """Compute the feature tables (from a canonical folder or in-memory tables), write them, apply the repo."""
    t0 = time.perf_counter()
    counts = write_feature_tables(config, canonical)
    log.info("feature tables in %s (%s, %.1f s): %s", feature_data_dir(config), config.features.engine,
             time.perf_counter() - t0, counts)
    return apply_repository(config)


# ------------------------------------------------------------------------------------- training examples
def _popularity_columns(store: "FeatureStore") -> list[str]:
    return [f.name for f in store.get_feature_view(POPULARITY_VIEW).features]


def training_join(store: "FeatureStore") -> list[JoinedView]:
    """The `training` feature service as the views of a point-in-time join: Feast's registry says which tables,
    keys, features and TTLs; the join itself runs as SQL (components.feature_tables)."""
    views = []
    for projection in store.get_feature_service("training").feature_view_projections:
        view = store.get_feature_view(projection.name)
        path = Path(view.batch_source.path)
        if not path.is_absolute():
            path = Path(store.config.repo_path) / path
        ttl_us = int(view.ttl / ONE_US) if view.ttl else 0
        views.append(JoinedView(view.name, str(path), tuple(c.name for c in view.entity_columns),
                                tuple(f.name for f in projection.features), ttl_us))
    return views


def write_training_examples(config: Config, store: "FeatureStore", canonical_dir: str | Path,
                            examples_dir: str | Path) -> Path:
    """Contract C1 into `<examples_dir>/examples.parquet`: the point-in-time join of `training_examples` done out
    of core as SQL over the feature tables and the canonical interactions, by features.engine (DuckDB here,
    Spark on a cluster). Feast's own join (`training_examples`) holds everything in memory."""
    cfg = config.features
    interactions = table_path(canonical_dir, INTERACTIONS)
    views, profile = training_join(store), config.dataset.user_attributes
    t0 = time.perf_counter()
    if cfg.engine == "spark":
        rows = spark_training_examples(spark_session(cfg.spark_master), interactions, views, profile, examples_dir)
    else:
        rows = duckdb_training_examples(interactions, views, profile, examples_dir, cfg.duckdb_memory_limit)
    log.info("point-in-time join of %d examples (%s) in %.1f s", rows, cfg.engine, time.perf_counter() - t0)
    return Path(examples_dir) / EXAMPLES_FILE


def _examples_summary(path: Path) -> dict[str, float]:
    """Rows, mean history length and the last row's user of an examples file, read in batches."""
    rows, history, last_user = 0, 0, None
    for batch in pq.ParquetFile(path).iter_batches(columns=["user_id", "recent_item_ids"]):
        rows += batch.num_rows
        history += int(pc.sum(pc.list_value_length(batch.column("recent_item_ids"))).as_py() or 0)
        last_user = batch.column("user_id")[-1].as_py() if batch.num_rows else last_user
    return {"rows": float(rows), "mean_history_length": history / rows if rows else 0.0, "last_user": last_user}


def _profile_values(values: pd.Series, attr: Attribute) -> pd.Series:
    """A profile column of the examples: integral numbers with -1 for unknown, other numbers with NaN,
    categories with UNKNOWN."""
    if not attr.is_numeric:
        return values.astype(object).where(values.notna(), UNKNOWN).astype(str)
    numbers = pd.to_numeric(values, errors="coerce")
    present = numbers.dropna()
    if (present == present.round()).all():
        return numbers.fillna(-1).round().astype("int64")
    return numbers.astype("float64")


def training_examples(store: "FeatureStore", interactions: pd.DataFrame,
                      profile: dict[str, Attribute]) -> pd.DataFrame:
    """Contract C1 by Feast's `get_historical_features` (in memory: the reference `write_training_examples` is
    tested against): one row per interaction with the `training` feature service joined point in time;
    `profile` = the declared user attributes (config.dataset.user_attributes).

    Each entity row is stamped 1 µs before its event, so only feature rows stamped strictly before the
    event (activity after earlier events, popularity of earlier events) can match.
    """
    inter = interactions.reset_index(drop=True)
    event_ts = utc_us(inter["event_timestamp"])
    entity = pd.DataFrame({"user_id": inter["user_id"].astype("int64"), "item_id": inter["item_id"].astype("int64"),
                           "event_timestamp": event_ts - ONE_US, "__row": np.arange(len(inter), dtype="int64")})
    t0 = time.perf_counter()
    hist = store.get_historical_features(entity_df=entity, features=store.get_feature_service("training")).to_df()
    log.info("point-in-time join of %d examples in %.1f s", len(entity), time.perf_counter() - t0)
    hist = entity[["__row"]].merge(hist.drop(columns=["user_id", "item_id", "event_timestamp"])
                                   .drop_duplicates("__row"), on="__row", how="left")
    if profile:
        missing_profile = int(hist[next(iter(profile))].isna().sum())
        if missing_profile:
            log.warning("%d examples have no user profile: numbers -1 (or NaN), categories '%s'", missing_profile,
                        UNKNOWN)
    last = hist["user_last_event_epoch_s"].astype("float64")
    out = pd.DataFrame({
        "user_id": inter["user_id"].astype("int64"),
        "item_id": inter["item_id"].astype("int64"),
        "event_timestamp": event_ts,
        "rating": inter["rating"].astype("float32"),
        **{name: _profile_values(hist[name], attr).to_numpy() for name, attr in profile.items()},
        "user_interaction_count": hist["user_interaction_count"].fillna(0).astype("int64"),
        "user_mean_rating": hist["user_mean_rating"].astype("float64"),
        "user_days_since_last": (event_ts.astype("int64").to_numpy() / 1e6 - last.to_numpy()) / SECONDS_PER_DAY,
        "recent_item_ids": [int_list(v) for v in hist["recent_item_ids"]],
    })
    for col in _popularity_columns(store):
        out[col] = hist[col].fillna(0).astype("int64")
    return out


def write_examples(examples: pd.DataFrame, folder: str | Path) -> Path:
    """Write C1 examples to `<folder>/examples.parquet` with the contract's types."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([pa.field(c, pa.list_(pa.int64())) if c == "recent_item_ids"
                        else pa.field(c, pa.timestamp("us", tz="UTC")) if c == "event_timestamp"
                        else pa.Schema.from_pandas(examples[[c]], preserve_index=False).field(c)
                        for c in examples.columns])
    path = folder / EXAMPLES_FILE
    pq.write_table(pa.Table.from_pandas(examples, schema=schema, preserve_index=False), path)
    return path


# ------------------------------------------------------------------------------------------------ online
def materialize(store: "FeatureStore", end: datetime | None = None) -> dict[str, int]:
    """Load feature values up to `end` (default now) into the online store: everything for views never
    materialized, then only what is new since the last run. Returns the number of views per mode."""
    end = end or datetime.now(UTC)
    views = store.list_feature_views()
    fresh = [v.name for v in views if v.most_recent_end_time is None]
    seen = [v.name for v in views if v.most_recent_end_time is not None]
    if fresh:
        store.materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=end, feature_views=fresh)
    if seen:
        store.materialize_incremental(end_date=end, feature_views=seen)
    return {"full": len(fresh), "incremental": len(seen)}


@dataclass
class LocalRedis:
    """A throw-away redis-server on loopback: password required, protected mode on, no persistence."""

    port: int
    password: str
    process: subprocess.Popen

    @property
    def address(self) -> str:
        """The connection string for features.redis_connection (the password goes in the environment)."""
        return f"127.0.0.1:{self.port}"

    def client(self, authenticated: bool = True) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password if authenticated else None)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_redis(port: int | None = None, password: str | None = None, redis_bin: str = "redis-server",
                timeout_s: float = 10.0) -> LocalRedis:
    """Start redis-server (a free port and a random password unless given) and wait until it answers."""
    import redis

    exe = shutil.which(redis_bin)
    if exe is None:
        raise FeatureStoreError(f"{redis_bin} not found on PATH: run scripts/system_deps.sh (Debian: redis-server)")
    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    password = password or secrets.token_hex(16)
    # the password goes through redis-server's stdin (a config file of one line), not its command line
    proc = subprocess.Popen([exe, "-", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--protected-mode", "yes"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    proc.stdin.write(f"requirepass {password}\n".encode())
    proc.stdin.close()
    server = LocalRedis(port, password, proc)
    client = server.client()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return server
            except redis.exceptions.ConnectionError as err:
                if proc.poll() is not None or time.monotonic() > deadline:
                    server.stop()
                    raise FeatureStoreError(f"redis-server did not start on 127.0.0.1:{port}") from err
                time.sleep(0.05)
    finally:
        client.close()


@contextmanager
def redis_server(redis_bin: str = "redis-server", timeout_s: float = 10.0) -> Iterator[LocalRedis]:
    """A LocalRedis for tests, benchmarks and local trials, stopped on exit. Feast reaches it with
    features.redis_connection=<address> and the password in $<features.redis_password_env>."""
    server = start_redis(redis_bin=redis_bin, timeout_s=timeout_s)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------- the whole step
def run_features(config: Config, canonical_dir: str | Path, examples_dir: str | Path,
                 tables_dir: str | Path | None = None) -> dict[str, float]:
    """The step: feature tables from canonical tables, apply, C1 examples (SQL, out of core), materialize.
    Returns metrics."""
    t0 = time.perf_counter()
    store = build_feature_store(config, canonical_dir)
    if tables_dir is not None:
        tables_dir = Path(tables_dir)
        tables_dir.mkdir(parents=True, exist_ok=True)
        for file in feature_data_dir(config).glob("*.parquet"):
            shutil.copy2(file, tables_dir / file.name)
    t1 = time.perf_counter()
    summary = _examples_summary(write_training_examples(config, store, canonical_dir, examples_dir))
    t2 = time.perf_counter()
    materialize(store)
    t3 = time.perf_counter()
    probe = online_features(store, [int(summary["last_user"])])
    if int(probe["user_interaction_count"].iloc[0]) == 0:
        raise FeatureStoreError(f"materialized user {int(summary['last_user'])} has no online activity")
    rows = {t: float(pq.ParquetFile(table_path(canonical_dir, t)).metadata.num_rows) for t in (USERS, ITEMS)}
    return {"examples": summary["rows"], "users": rows[USERS], "items": rows[ITEMS],
            "tables_seconds": round(t1 - t0, 3), "examples_seconds": round(t2 - t1, 3),
            "materialize_seconds": round(t3 - t2, 3), "mean_history_length": summary["mean_history_length"]}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """`python -m components.features` (the Spark Operator's driver runs this file): the whole features step from a
    config file and a canonical dataset folder; prints its metrics as JSON."""
    import argparse

    from components.config import load_config

    parser = argparse.ArgumentParser(description="The features step: feature tables (features.engine), Feast "
                                     "apply, point-in-time training examples, materialization.")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--canonical", required=True, help="folder with interactions/users/items parquet")
    parser.add_argument("--examples", required=True, help="folder for examples.parquet (contract C1)")
    parser.add_argument("--tables", default=None, help="folder for a copy of the feature tables")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_features(load_config(args.config, args.overrides), args.canonical, args.examples, args.tables)
    print(json.dumps(result))
    return result


@step
def features_op(config: str, canonical: Input[Dataset], examples: Output[Dataset], feature_tables: Output[Dataset],
                metrics: Output[Metrics]):
    """KFP step `features`: Feast feature tables, point-in-time training examples (C1), online store."""
    import os

    from components.config import config_from_text
    from components.errors import retry_transient
    from components.features import run_features

    os.makedirs(examples.path, exist_ok=True)
    os.makedirs(feature_tables.path, exist_ok=True)
    cfg = config_from_text(config)
    result = retry_transient(lambda: run_features(cfg, canonical.path, examples.path, feature_tables.path),
                             what="features")
    for key, value in result.items():
        metrics.log_metric(key, value)
    examples.metadata["rows"] = int(result["examples"])
    examples.metadata["file"] = "examples.parquet"


if __name__ == "__main__":
    main()
