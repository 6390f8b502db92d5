"""The data contracts of DESIGN.md: canonical tables and the batch-recommendations format."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.errors import RecsysError

INTERACTIONS = "interactions"
USERS = "users"
ITEMS = "items"
TABLES = (INTERACTIONS, USERS, ITEMS)

# Required columns and their pandas dtypes; extra profile/metadata columns are allowed.
REQUIRED_COLUMNS: dict[str, dict[str, str]] = {
    INTERACTIONS: {
        "user_id": "int64",
        "item_id": "int64",
        "rating": "float32",
        "event_timestamp": "datetime64[us, UTC]",
    },
    USERS: {"user_id": "int64", "created_timestamp": "datetime64[us, UTC]"},
    ITEMS: {
        "item_id": "int64",
        "title": "object",
        "text": "object",
        "created_timestamp": "datetime64[us, UTC]",
    },
}
KEYS = {INTERACTIONS: ("user_id", "item_id", "event_timestamp"), USERS: ("user_id",), ITEMS: ("item_id",)}
RECOMMENDATION_COLUMNS = {"user_id": "int64", "item_id": "int64", "rank": "int64", "score": "float64"}


class SchemaError(RecsysError, ValueError):
    """A table does not have the shape of its contract; the message names table and column."""


def table_path(folder: str | Path, table: str) -> Path:
    """Where a canonical table lives inside a dataset folder."""
    return Path(folder) / f"{table}.parquet"


def read_tables(folder: str | Path) -> dict[str, pd.DataFrame]:
    """Read the three canonical tables from a dataset folder."""
    return {name: pd.read_parquet(table_path(folder, name)) for name in TABLES}


def write_tables(tables: dict[str, pd.DataFrame], folder: str | Path) -> Path:
    """Write the three canonical tables (µs timestamps, which every Feast offline store reads)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        tables[name].to_parquet(table_path(folder, name), index=False)
    return folder


def check_recommendations(df: pd.DataFrame, where: str = "recommendations") -> None:
    """Raise SchemaError unless `df` is in the batch-recommendations format."""
    missing = [c for c in RECOMMENDATION_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {missing}")
    for col in ("user_id", "item_id", "rank"):
        if not pd.api.types.is_integer_dtype(df[col]):
            raise SchemaError(f"{where}: column '{col}' must be integer, got {df[col].dtype}")
    if not pd.api.types.is_float_dtype(df["score"]):
        raise SchemaError(f"{where}: column 'score' must be float, got {df['score'].dtype}")
    if (df["rank"] < 1).any():
        raise SchemaError(f"{where}: rank starts at 1")
    if df.duplicated(["user_id", "item_id"]).any():
        raise SchemaError(f"{where}: an item appears twice for one user")
    ranks = df.sort_values(["user_id", "rank"]).groupby("user_id")["rank"]
    if not (ranks.apply(lambda r: list(r) == list(range(1, len(r) + 1)))).all():
        raise SchemaError(f"{where}: ranks of each user must be 1..n without gaps")
