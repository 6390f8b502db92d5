"""The data contracts of DESIGN.md: canonical tables and the batch-recommendations format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from components.errors import RecsysError

INTERACTIONS = "interactions"
USERS = "users"
ITEMS = "items"
TABLES = (INTERACTIONS, USERS, ITEMS)
ID_MAPS = "id_maps"  # the folder of a dataset that holds its id maps (components.id_maps)

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
# The serving bundle (contract C5) that `compress` writes and the Triton repository builder reads.
BUNDLE_FILES = ("user_tower.onnx", "item_embeddings.npy", "item_ids.npy", "manifest.json", "smoke.json")
BUNDLE_MANIFEST_KEYS = ("model_version", "variant", "embedding_dim", "max_seq_len", "profile_fields",
                        "profile_encoder", "created_at")
RECOMMENDATION_COLUMNS = {"user_id": "int64|string", "item_id": "int64|string", "rank": "int64", "score": "float64"}


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
    for col in ("user_id", "item_id"):  # external ids: integers or strings
        if not (pd.api.types.is_integer_dtype(df[col]) or pd.api.types.is_string_dtype(df[col])):
            raise SchemaError(f"{where}: column '{col}' must hold integer or string ids, got {df[col].dtype}")
    if not pd.api.types.is_integer_dtype(df["rank"]):
        raise SchemaError(f"{where}: column 'rank' must be integer, got {df['rank'].dtype}")
    if not pd.api.types.is_float_dtype(df["score"]):
        raise SchemaError(f"{where}: column 'score' must be float, got {df['score'].dtype}")
    if (df["rank"] < 1).any():
        raise SchemaError(f"{where}: rank starts at 1")
    if df.duplicated(["user_id", "item_id"]).any():
        raise SchemaError(f"{where}: an item appears twice for one user")
    ranks = df.sort_values(["user_id", "rank"]).groupby("user_id")["rank"]
    if not (ranks.apply(lambda r: list(r) == list(range(1, len(r) + 1)))).all():
        raise SchemaError(f"{where}: ranks of each user must be 1..n without gaps")


class BundleError(SchemaError):
    """A serving bundle is missing a file or its parts disagree."""


def read_bundle(bundle_dir: str | Path, extra_files: tuple[str, ...] = (),
                optional: tuple[str, ...] = ()) -> tuple[dict, np.ndarray, np.ndarray]:
    """Read and cross-check a serving bundle (C5): (manifest, item_ids, item_embeddings memory-mapped).

    `extra_files` must be present too; `optional` lists C5 files that may be absent (smoke.json while it is made).
    """
    path = Path(bundle_dir)
    needed = [name for name in (*BUNDLE_FILES, *extra_files) if name not in optional]
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise BundleError(f"serving bundle {path} lacks {', '.join(missing)}")
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        ids = np.load(path / "item_ids.npy", mmap_mode="r")
        emb = np.load(path / "item_embeddings.npy", mmap_mode="r")
    except (OSError, ValueError) as err:
        raise BundleError(f"serving bundle {path} cannot be read: {err}") from err
    absent = [key for key in BUNDLE_MANIFEST_KEYS if key not in manifest]
    if absent:
        raise BundleError(f"{path / 'manifest.json'} lacks {', '.join(absent)}")
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise BundleError(f"{path / 'item_ids.npy'} must be int64 [N], got {ids.dtype} {list(ids.shape)}")
    if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[0] != ids.shape[0]:
        raise BundleError(
            f"{path / 'item_embeddings.npy'} must be float32 [{ids.shape[0]}, D], got {emb.dtype} {list(emb.shape)}"
        )
    if emb.shape[1] != int(manifest["embedding_dim"]):
        raise BundleError(f"embedding_dim {manifest['embedding_dim']} in manifest, {emb.shape[1]} in item_embeddings")
    if len(np.unique(ids)) != len(ids):
        raise BundleError(f"{path / 'item_ids.npy'} holds duplicate item ids")
    return manifest, ids, emb
