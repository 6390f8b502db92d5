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

The training examples (contract C1) are Feast's point-in-time join done the same way, out of core: each event's
entity row, stamped 1 µs before the event, takes from each feature view the latest row stamped at or before it
(within the view's TTL, if any): an `ASOF JOIN` on DuckDB, a running maximum over the union of entity and
feature timestamps on Spark (which has no ASOF JOIN).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.dataset import Attribute, DatasetSchema, bucket_labels
from components.errors import RecsysError
from components.schemas import INTERACTIONS, ITEMS, USERS, table_path, write_tables

UNKNOWN = "unknown"
BAND_SUFFIX = "_band"  # a bucketed attribute `x` also has the feature `x_band` (its label)
FEATURE_TABLES = ("user_profile", "user_activity", "item_metadata", "item_popularity")
EXAMPLES = "examples"  # the C1 table the point-in-time join writes (<folder>/examples.parquet)
POPULARITY_VIEW = "item_popularity"  # the view whose features are the examples' popularity counts
SECONDS_PER_DAY = 86400.0


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
    minus_one_us: str  # timestamp - 1 µs: {col}
    epoch_us: str  # timestamp -> microseconds since the epoch (integer): {col}
    empty_int_list: str  # an empty list of BIGINT
    asof_join: str  # join `view` to entity rows `e`: its latest row with event_timestamp <= e.entity_ts
                    # {view}, {keys}, {on} (e.k = view.k ...), {on_match} (e.k = view_m.k ...)


DUCKDB = Dialect(
    name="duckdb", string="VARCHAR",
    list_window="list({col}) OVER ({window})",
    split="list_filter(string_split(COALESCE({col}, ''), '|'), s -> s <> '')",
    epoch_seconds="epoch_us({col}) / 1e6",
    plus_days="{col} + INTERVAL {days} DAY",
    minus_one_second="{col} - INTERVAL 1 SECOND",
    minus_one_us="{col} - INTERVAL 1 MICROSECOND",
    epoch_us="epoch_us({col})",
    empty_int_list="CAST([] AS BIGINT[])",
    asof_join="ASOF LEFT JOIN {view} ON {on} AND e.entity_ts >= {view}.event_timestamp",
)
SPARK = Dialect(
    name="spark", string="STRING",
    list_window="collect_list({col}) OVER ({window})",
    split="filter(split(COALESCE({col}, ''), '[|]'), s -> s <> '')",
    epoch_seconds="unix_micros({col}) / 1e6",
    plus_days="{col} + make_interval(0, 0, 0, {days}, 0, 0, 0)",
    minus_one_second="{col} - make_interval(0, 0, 0, 0, 0, 0, 1)",
    minus_one_us="timestamp_micros(unix_micros({col}) - 1)",
    epoch_us="unix_micros({col})",
    empty_int_list="CAST(array() AS ARRAY<BIGINT>)",
    # each (key, entity time) gets the running maximum of the view's timestamps up to it (feature rows sort
    # before entity rows at the same time), then the view's row at that timestamp by an equi-join
    asof_join="""LEFT JOIN (
            SELECT {keys}, ts AS entity_ts, feature_ts FROM (
                SELECT {keys}, ts, side, MAX(feature_ts) OVER (PARTITION BY {keys} ORDER BY ts, side
                                                               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
                                         AS feature_ts
                FROM (SELECT DISTINCT {keys}, entity_ts AS ts, 1 AS side, CAST(NULL AS TIMESTAMP) AS feature_ts
                      FROM e
                      UNION ALL
                      SELECT {keys}, event_timestamp AS ts, 0 AS side, event_timestamp AS feature_ts
                      FROM {view}) stream) running
            WHERE side = 1) {view}_m ON {on_match} AND e.entity_ts = {view}_m.entity_ts
        LEFT JOIN {view} ON {on} AND {view}.event_timestamp = {view}_m.feature_ts""",
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


@dataclass(frozen=True)
class JoinedView:
    """A feature view of a point-in-time join: its name (the SQL view over its table), the table's parquet file,
    its join keys, the features taken and its TTL in microseconds (0: a value holds until the next row)."""

    name: str
    path: str
    keys: tuple[str, ...]
    features: tuple[str, ...]
    ttl_us: int = 0


def _joined_feature(view: JoinedView, name: str, d: Dialect) -> str:
    """A feature of the matched row; past the view's TTL (row time + TTL < entity time) it is missing."""
    column = f"{view.name}.{name}"
    if not view.ttl_us:
        return column
    alive = f"{d.epoch_us.format(col=f'{view.name}.event_timestamp')} + {view.ttl_us} >= " \
            f"{d.epoch_us.format(col='e.entity_ts')}"
    return f"CASE WHEN {alive} THEN {column} END"


def _example_profile(name: str, attr: Attribute, value: str, integral: bool, d: Dialect) -> str:
    """A profile column of the examples: integral numbers with -1 for unknown, other numbers with NULL (NaN),
    categories with UNKNOWN."""
    if not attr.is_numeric:
        return f"COALESCE(CAST({value} AS {d.string}), '{UNKNOWN}') AS {name}"
    if integral:
        return f"COALESCE(CAST({value} AS BIGINT), -1) AS {name}"
    return f"CAST({value} AS DOUBLE) AS {name}"


def training_examples_sql(views: list[JoinedView], profile: dict[str, Attribute], integral: set[str],
                          d: Dialect) -> str:
    """The C1 training examples of view `interactions`: one row per event with every view's features joined
    point in time (Feast's semantics: the entity row is stamped 1 µs before the event, so only feature rows
    stamped strictly earlier match). `profile`: the declared user attributes; `integral`: those whose
    user_profile column is an integer (ingest stores integral numbers as integers, so these are the columns whose
    values Feast's join would also return as integers)."""
    feature = {name: _joined_feature(v, name, d) for v in views for name in v.features}
    popularity = next((v.features for v in views if v.name == POPULARITY_VIEW), ())
    joins = []
    for v in views:
        on = " AND ".join(f"e.{k} = {v.name}.{k}" for k in v.keys)
        on_match = " AND ".join(f"e.{k} = {v.name}_m.{k}" for k in v.keys)
        joins.append(d.asof_join.format(view=v.name, keys=", ".join(v.keys), on=on, on_match=on_match))
    columns = [
        *(_example_profile(n, a, feature[n], n in integral, d) for n, a in profile.items()),
        f"CAST(COALESCE({feature['user_interaction_count']}, 0) AS BIGINT) AS user_interaction_count",
        f"CAST({feature['user_mean_rating']} AS DOUBLE) AS user_mean_rating",
        f"({d.epoch_seconds.format(col='e.event_timestamp')} - {feature['user_last_event_epoch_s']}) / "
        f"{SECONDS_PER_DAY} AS user_days_since_last",
        f"COALESCE({feature['recent_item_ids']}, {d.empty_int_list}) AS recent_item_ids",
        *(f"CAST(COALESCE({feature[c]}, 0) AS BIGINT) AS {c}" for c in popularity),
    ]
    joined = "\n        ".join(joins)
    return f"""
        WITH e AS (SELECT CAST(user_id AS BIGINT) AS user_id, CAST(item_id AS BIGINT) AS item_id, event_timestamp,
                          CAST(rating AS FLOAT) AS rating, {d.minus_one_us.format(col='event_timestamp')} AS entity_ts
                   FROM interactions)
        SELECT e.user_id, e.item_id, e.event_timestamp, e.rating, {', '.join(columns)}
        FROM e
        {joined}
        ORDER BY e.user_id, e.event_timestamp, e.item_id"""


def _examples_query(views: list[JoinedView], profile: dict[str, Attribute], d: Dialect) -> str:
    """training_examples_sql with the integral profile columns read from the user_profile table's schema."""
    integral = set()
    for view in views:
        if view.name == "user_profile":
            integral = {f.name for f in pq.read_schema(view.path) if pa.types.is_integer(f.type)}
    return training_examples_sql(views, profile, integral, d)


def _sample(folder: Path, table: str, rows: int = 1000) -> pd.DataFrame:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(table_path(folder, table))
    return next(file.iter_batches(batch_size=rows)).to_pandas() if file.metadata.num_rows else pd.DataFrame()


def duckdb_to_parquet(sources: dict[str, Path | str], queries: dict[str, str], out_dir: Path,
                      memory_limit: str = "4GB") -> dict[str, int]:
    """Run each query with DuckDB over views of the parquet `sources`; write `<out_dir>/<name>.parquet`.

    Out of core: DuckDB streams the parquet files and spills to a temporary folder beyond `memory_limit`."""
    import duckdb

    out_dir.mkdir(parents=True, exist_ok=True)
    spill = tempfile.mkdtemp(prefix="duckdb-spill-")
    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": spill, "threads": 1,
                                 "preserve_insertion_order": False})
    counts = {}
    try:
        for view, path in sources.items():
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{path}')")
        for name, sql in queries.items():
            target = out_dir / f"{name}.parquet"
            try:
                con.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet)")
            except duckdb.Error as err:
                raise FeatureTableError(f"duckdb: table {name} failed: {err}") from err
            counts[name] = int(con.execute(f"SELECT COUNT(*) FROM read_parquet('{target}')").fetchone()[0])
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    return counts


def spark_to_parquet(spark, sources: dict[str, Path | str], queries: dict[str, str], out_dir: Path) -> dict[str, int]:
    """Run each query with Spark SQL (session time zone UTC, microsecond parquet timestamps) over views of the
    parquet `sources`; write `<out_dir>/<name>.parquet` as single files, the layout DuckDB writes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    for view, path in sources.items():
        spark.read.parquet(str(path)).createOrReplaceTempView(view)
    counts = {}
    for name, sql in queries.items():
        frame = spark.sql(sql)
        parts = out_dir / f".{name}.parts"
        frame.coalesce(1).write.mode("overwrite").parquet(str(parts))
        written = sorted(parts.glob("part-*.parquet"))
        if len(written) != 1:
            raise FeatureTableError(f"spark: table {name} wrote {len(written)} parts to {parts}")
        shutil.move(str(written[0]), out_dir / f"{name}.parquet")
        shutil.rmtree(parts)
        counts[name] = pq.ParquetFile(out_dir / f"{name}.parquet").metadata.num_rows
    return counts


def _canonical_sources(canonical_dir: Path) -> dict[str, Path]:
    return {table: table_path(canonical_dir, table) for table in (INTERACTIONS, USERS, ITEMS)}


def duckdb_feature_tables(canonical_dir: str | Path, out_dir: str | Path, schema: DatasetSchema, last_n: int,
                          windows_days: list[int] | tuple[int, ...], memory_limit: str = "4GB") -> dict[str, int]:
    """Run the feature queries with DuckDB over the canonical parquet files; write `<out_dir>/<table>.parquet`."""
    canonical_dir = Path(canonical_dir)
    queries = feature_queries(schema, _sample(canonical_dir, USERS), _sample(canonical_dir, ITEMS), last_n,
                              windows_days, DUCKDB)
    return duckdb_to_parquet(_canonical_sources(canonical_dir), queries, Path(out_dir), memory_limit)


def spark_feature_tables(spark, canonical_dir: str | Path, out_dir: str | Path, schema: DatasetSchema, last_n: int,
                         windows_days: list[int] | tuple[int, ...]) -> dict[str, int]:
    """Run the same queries with Spark SQL; write `<out_dir>/<table>.parquet` as single files."""
    canonical_dir = Path(canonical_dir)
    queries = feature_queries(schema, _sample(canonical_dir, USERS), _sample(canonical_dir, ITEMS), last_n,
                              windows_days, SPARK)
    return spark_to_parquet(spark, _canonical_sources(canonical_dir), queries, Path(out_dir))


def _example_sources(interactions: str | Path, views: list[JoinedView]) -> dict[str, Path | str]:
    return {INTERACTIONS: interactions, **{v.name: v.path for v in views}}


def duckdb_training_examples(interactions: str | Path, views: list[JoinedView], profile: dict[str, Attribute],
                             out_dir: str | Path, memory_limit: str = "4GB") -> int:
    """The C1 examples of an interactions parquet file by DuckDB (ASOF JOIN); writes `<out_dir>/examples.parquet`
    and returns its rows."""
    query = _examples_query(views, profile, DUCKDB)
    return duckdb_to_parquet(_example_sources(interactions, views), {EXAMPLES: query}, Path(out_dir),
                             memory_limit)[EXAMPLES]


def spark_training_examples(spark, interactions: str | Path, views: list[JoinedView], profile: dict[str, Attribute],
                            out_dir: str | Path) -> int:
    """The same examples by Spark SQL; writes `<out_dir>/examples.parquet` and returns its rows."""
    query = _examples_query(views, profile, SPARK)
    return spark_to_parquet(spark, _example_sources(interactions, views), {EXAMPLES: query}, Path(out_dir))[EXAMPLES]


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
    """A Spark session for the feature queries (UTC, no UI); on a cluster the Spark Operator supplies one, whose
    settings (shuffle partitions, executors) stay; a local master gets 4 shuffle partitions."""
    from pyspark.sql import SparkSession

    builder = (SparkSession.builder.master(master).appName(app_name).config("spark.ui.enabled", "false")
               .config("spark.sql.session.timeZone", "UTC"))
    if master.startswith("local"):
        builder = builder.config("spark.sql.shuffle.partitions", "4")
    return builder.getOrCreate()


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
