"""The feature tables Feast serves, as SQL: one computation, run by DuckDB on one machine and by Spark on a
cluster.

- user_profile: the declared user attributes (and the band of each bucketed one), valid from before the
  user's first event;
- user_activity: one row per (user, distinct event time) holding the state AFTER the events at that time,
  with the last-N items;
- item_metadata: title, text and the declared item attributes (multi-valued ones as lists);
- item_popularity: event counts in rolling windows [t - w, t), one row per change point.

Each table is one SQL query over the canonical tables (views `interactions`, `users`, `items`), written once;
the few functions whose spelling differs per engine come from a `Dialect`. DuckDB streams the parquet files
and spills to disk past its memory limit; Spark runs the same queries through Spark SQL
(`python -m components.feature_tables --engine spark`, what the cluster's Spark job runs). No per-event
Python: the last-N sequence is a windowed list aggregate.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.dataset import DatasetSchema, bucket_labels
from components.errors import RecsysError
from components.schemas import INTERACTIONS, ITEMS, USERS, table_path, write_tables

UNKNOWN = "unknown"
BAND_SUFFIX = "_band"  # a bucketed attribute `x` also has the feature `x_band` (its label)
FEATURE_TABLES = ("user_profile", "user_activity", "item_metadata", "item_popularity")


class FeatureTableError(RecsysError):
    """The canonical tables cannot be turned into feature tables; the message names the engine and table."""


def popularity_column(days: int) -> str:
    """Name of the popularity feature over `days` days (as in definitions.popularity_feature)."""
    return f"item_popularity_{days}d"


def band_column(name: str) -> str:
    """The feature holding the band label of bucketed attribute `name`."""
    return f"{name}{BAND_SUFFIX}"


def utc_us(ts: pd.Series) -> pd.Series:
    return pd.to_datetime(ts, utc=True).astype("datetime64[us, UTC]")


@dataclass(frozen=True)
class Dialect:
    """The spellings that differ between the engines."""

    name: str
    string: str  # the text type
    list_window: str  # last-N list over a window frame: {col}, {window}
    split: str  # multi-valued cell -> list of non-empty strings: {col}
    epoch_seconds: str  # timestamp -> seconds since the epoch (double): {col}
    plus_days: str  # timestamp + n days: {col}, {days}
    minus_one_second: str  # timestamp - 1 s: {col}


DUCKDB = Dialect(
    name="duckdb", string="VARCHAR",
    list_window="list({col}) OVER ({window})",
    split="list_filter(string_split(COALESCE({col}, ''), '|'), s -> s <> '')",
    epoch_seconds="epoch_us({col}) / 1e6",
    plus_days="{col} + INTERVAL {days} DAY",
    minus_one_second="{col} - INTERVAL 1 SECOND",
)
SPARK = Dialect(
    name="spark", string="STRING",
    list_window="collect_list({col}) OVER ({window})",
    split="filter(split(COALESCE({col}, ''), '[|]'), s -> s <> '')",
    epoch_seconds="unix_micros({col}) / 1e6",
    plus_days="{col} + make_interval(0, 0, 0, {days}, 0, 0, 0)",
    minus_one_second="{col} - make_interval(0, 0, 0, 0, 0, 0, 1)",
)


def _integral(frame: pd.DataFrame, name: str) -> bool:
    return pd.api.types.is_integer_dtype(frame[name]) if name in frame else True


def _band_case(column: str, edges: list[float], d: Dialect) -> str:
    labels = bucket_labels(edges)
    whens = " ".join(f"WHEN {column} < {edge!r} THEN '{label}'" for edge, label in zip(edges, labels, strict=False))
    return f"CASE WHEN {column} IS NULL THEN '{UNKNOWN}' {whens} ELSE '{labels[-1]}' END"


def _valid_from(created: str, first: str, d: Dialect) -> str:
    """Profiles and metadata hold from before the entity's first event (its creation precedes it)."""
    earliest = f"CASE WHEN {first} IS NULL OR {created} < {first} THEN {created} ELSE {first} END"
    return d.minus_one_second.format(col=earliest)


def user_profile_sql(schema: DatasetSchema, users: pd.DataFrame, d: Dialect) -> str:
    columns = []
    for name, attr in schema.user_attributes.items():
        if attr.is_numeric:
            kind = "BIGINT" if _integral(users, name) else "DOUBLE"
            value = f"CAST(ROUND(u.{name}) AS BIGINT)" if kind == "BIGINT" else f"CAST(u.{name} AS DOUBLE)"
            columns.append(f"{value} AS {name}")
        else:
            columns.append(f"COALESCE(CAST(u.{name} AS {d.string}), '{UNKNOWN}') AS {name}")
        if attr.kind == "bucketed":
            columns.append(f"{_band_case(f'u.{name}', attr.edges, d)} AS {band_column(name)}")
    if not schema.user_attributes:
        columns.append("CAST(1 AS BIGINT) AS profile_known")
    return f"""
        WITH first_event AS (SELECT user_id, MIN(event_timestamp) AS first_ts FROM interactions GROUP BY user_id)
        SELECT CAST(u.user_id AS BIGINT) AS user_id, {', '.join(columns)},
               {_valid_from('u.created_timestamp', 'f.first_ts', d)} AS event_timestamp
        FROM users u LEFT JOIN first_event f ON u.user_id = f.user_id
        ORDER BY user_id"""


def user_activity_sql(last_n: int, d: Dialect) -> str:
    """One row per (user, distinct event time): the state AFTER all of the user's events at that time."""
    running = "PARTITION BY user_id ORDER BY event_timestamp, item_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"
    recent = f"PARTITION BY user_id ORDER BY event_timestamp, item_id ROWS BETWEEN {last_n - 1} PRECEDING AND " \
             "CURRENT ROW"
    return f"""
        WITH running AS (
            SELECT user_id, item_id, event_timestamp,
                   COUNT(*) OVER ({running}) AS user_interaction_count,
                   SUM(CASE WHEN rating IS NULL THEN 0 ELSE 1 END) OVER ({running}) AS user_rated_count,
                   SUM(COALESCE(CAST(rating AS DOUBLE), 0.0)) OVER ({running}) AS rating_sum,
                   {d.list_window.format(col='item_id', window=recent)} AS recent_item_ids,
                   ROW_NUMBER() OVER (PARTITION BY user_id, event_timestamp ORDER BY item_id DESC) AS last_at_time
            FROM interactions)
        SELECT CAST(user_id AS BIGINT) AS user_id, event_timestamp,
               CAST(user_interaction_count AS BIGINT) AS user_interaction_count,
               CAST(user_rated_count AS BIGINT) AS user_rated_count,
               CASE WHEN user_rated_count > 0 THEN rating_sum / user_rated_count END AS user_mean_rating,
               {d.epoch_seconds.format(col='event_timestamp')} AS user_last_event_epoch_s,
               recent_item_ids
        FROM running WHERE last_at_time = 1
        ORDER BY user_id, event_timestamp"""


def item_metadata_sql(schema: DatasetSchema, items: pd.DataFrame, d: Dialect) -> str:
    columns = []
    for name, attr in schema.item_attributes.items():
        if attr.is_numeric:
            kind = "BIGINT" if _integral(items, name) else "DOUBLE"
            value = f"CAST(ROUND(i.{name}) AS BIGINT)" if kind == "BIGINT" else f"CAST(i.{name} AS DOUBLE)"
        elif attr.kind == "multi_categorical":
            value = d.split.format(col=f"i.{name}")
        else:
            value = f"COALESCE(CAST(i.{name} AS {d.string}), '{UNKNOWN}')"
        columns.append(f"{value} AS {name}")
    extra = "".join(f", {c}" for c in columns)
    return f"""
        WITH first_event AS (SELECT item_id, MIN(event_timestamp) AS first_ts FROM interactions GROUP BY item_id)
        SELECT CAST(i.item_id AS BIGINT) AS item_id, CAST(i.title AS {d.string}) AS title,
               CAST(i.text AS {d.string}) AS text{extra},
               {_valid_from('i.created_timestamp', 'f.first_ts', d)} AS event_timestamp
        FROM items i LEFT JOIN first_event f ON i.item_id = f.item_id
        ORDER BY item_id"""


def item_popularity_sql(windows_days: list[int] | tuple[int, ...], d: Dialect) -> str:
    """Rows at every change point of each item's counts in windows [t - w, t): an event at e adds one from e
    on and removes it from e + w on."""
    if not windows_days:
        raise FeatureTableError("features.popularity_windows_days is empty: give at least one window")
    cols = [popularity_column(w) for w in windows_days]
    enter = ", ".join(f"n AS {c}" for c in cols)
    leaves = " UNION ALL ".join(
        f"SELECT item_id, {d.plus_days.format(col='event_timestamp', days=w)} AS ts, "
        + ", ".join(f"{'-n' if c == col else '0'} AS {c}" for c in cols) + " FROM base"
        for w, col in zip(windows_days, cols, strict=True))
    sums = ", ".join(f"SUM({c}) AS {c}" for c in cols)
    running = ", ".join(f"CAST(SUM({c}) OVER (PARTITION BY item_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING "
                        f"AND CURRENT ROW) AS BIGINT) AS {c}" for c in cols)
    return f"""
        WITH base AS (SELECT item_id, event_timestamp, COUNT(*) AS n FROM interactions
                      GROUP BY item_id, event_timestamp),
             deltas AS (SELECT item_id, event_timestamp AS ts, {enter} FROM base UNION ALL {leaves}),
             points AS (SELECT item_id, ts, {sums} FROM deltas GROUP BY item_id, ts)
        SELECT CAST(item_id AS BIGINT) AS item_id, ts AS event_timestamp, {running}
        FROM points ORDER BY item_id, event_timestamp"""


def feature_queries(schema: DatasetSchema, users: pd.DataFrame, items: pd.DataFrame, last_n: int,
                    windows_days: list[int] | tuple[int, ...], d: Dialect) -> dict[str, str]:
    """Every feature table's query in dialect `d`; `users`/`items` (a sample is enough) tell integral columns."""
    return {
        "user_profile": user_profile_sql(schema, users, d),
        "user_activity": user_activity_sql(last_n, d),
        "item_metadata": item_metadata_sql(schema, items, d),
        "item_popularity": item_popularity_sql(windows_days, d),
    }


def _sample(folder: Path, table: str, rows: int = 1000) -> pd.DataFrame:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(table_path(folder, table))
    return next(file.iter_batches(batch_size=rows)).to_pandas() if file.metadata.num_rows else pd.DataFrame()


def duckdb_feature_tables(canonical_dir: str | Path, out_dir: str | Path, schema: DatasetSchema, last_n: int,
                          windows_days: list[int] | tuple[int, ...], memory_limit: str = "4GB") -> dict[str, int]:
    """Run the feature queries with DuckDB over the canonical parquet files; write `<out_dir>/<table>.parquet`.

    Out of core: DuckDB streams the parquet files and spills to a temporary folder beyond `memory_limit`."""
    import duckdb

    canonical_dir, out_dir = Path(canonical_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    queries = feature_queries(schema, _sample(canonical_dir, USERS), _sample(canonical_dir, ITEMS), last_n,
                              windows_days, DUCKDB)
    spill = tempfile.mkdtemp(prefix="duckdb-spill-")
    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": spill, "threads": 1,
                                 "preserve_insertion_order": False})
    counts = {}
    try:
        for table in (INTERACTIONS, USERS, ITEMS):
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{table_path(canonical_dir, table)}')")
        for name, sql in queries.items():
            target = out_dir / f"{name}.parquet"
            try:
                con.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet)")
            except duckdb.Error as err:
                raise FeatureTableError(f"duckdb: feature table {name} failed: {err}") from err
            counts[name] = int(con.execute(f"SELECT COUNT(*) FROM read_parquet('{target}')").fetchone()[0])
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    return counts


def spark_feature_tables(spark, canonical_dir: str | Path, out_dir: str | Path, schema: DatasetSchema, last_n: int,
                         windows_days: list[int] | tuple[int, ...]) -> dict[str, int]:
    """Run the same queries with Spark SQL (session time zone UTC, microsecond parquet timestamps); write
    `<out_dir>/<table>.parquet` as single files, so both engines hand Feast the same layout."""
    canonical_dir, out_dir = Path(canonical_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    queries = feature_queries(schema, _sample(canonical_dir, USERS), _sample(canonical_dir, ITEMS), last_n,
                              windows_days, SPARK)
    for table in (INTERACTIONS, USERS, ITEMS):
        spark.read.parquet(str(table_path(canonical_dir, table))).createOrReplaceTempView(table)
    counts = {}
    for name, sql in queries.items():
        frame = spark.sql(sql)
        parts = out_dir / f".{name}.parts"
        frame.coalesce(1).write.mode("overwrite").parquet(str(parts))
        written = sorted(parts.glob("part-*.parquet"))
        if len(written) != 1:
            raise FeatureTableError(f"spark: feature table {name} wrote {len(written)} parts to {parts}")
        shutil.move(str(written[0]), out_dir / f"{name}.parquet")
        shutil.rmtree(parts)
        counts[name] = int(frame.count())
    return counts


def compute_feature_tables(tables: dict[str, pd.DataFrame], last_n: int, windows_days: list[int] | tuple[int, ...],
                           schema: DatasetSchema) -> dict[str, pd.DataFrame]:
    """The feature tables of in-memory canonical tables (through DuckDB, as the features step computes them)."""
    if tables[INTERACTIONS].empty:
        raise FeatureTableError("interactions table is empty: no features to compute")
    with tempfile.TemporaryDirectory(prefix="feature-tables-") as tmp:
        write_tables(tables, Path(tmp) / "canonical")
        duckdb_feature_tables(Path(tmp) / "canonical", Path(tmp) / "features", schema, last_n, windows_days)
        return {name: _lists_as_lists(pd.read_parquet(Path(tmp) / "features" / f"{name}.parquet"))
                for name in FEATURE_TABLES}


def _lists_as_lists(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet list columns come back as numpy arrays; plain lists compare and print naturally."""
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].map(lambda v: hasattr(v, "tolist")).any():
            frame[column] = frame[column].map(lambda v: v.tolist() if hasattr(v, "tolist") else v)
    return frame


def spark_session(master: str = "local[1]", app_name: str = "recsys-features"):
    """A Spark session for the feature queries (UTC, no UI); on a cluster the Spark Operator supplies one."""
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master(master).appName(app_name).config("spark.ui.enabled", "false")
            .config("spark.sql.session.timeZone", "UTC").config("spark.sql.shuffle.partitions", "4")
            .getOrCreate())


def main(argv: list[str] | None = None) -> dict[str, int]:
    """`python -m components.feature_tables`: the feature tables of a canonical dataset folder."""
    from components.config import load_config

    parser = argparse.ArgumentParser(description="Compute the feature tables of a canonical dataset folder "
                                     "with DuckDB or Spark (the cluster's Spark job runs this).")
    parser.add_argument("--canonical", required=True, help="folder with interactions/users/items parquet")
    parser.add_argument("--out", required=True, help="folder for the feature tables")
    parser.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb")
    parser.add_argument("--spark-master", default=None, help="Spark master (default: the session's, or local[1])")
    parser.add_argument("--config", default=None, help="project config file (dataset declaration, windows)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    cfg = config.features
    if args.engine == "duckdb":
        counts = duckdb_feature_tables(args.canonical, args.out, config.dataset, cfg.last_n_items,
                                       cfg.popularity_windows_days)
    else:
        spark = spark_session(args.spark_master or "local[1]")
        counts = spark_feature_tables(spark, args.canonical, args.out, config.dataset, cfg.last_n_items,
                                      cfg.popularity_windows_days)
    print(counts)
    return counts


if __name__ == "__main__":
    main()
