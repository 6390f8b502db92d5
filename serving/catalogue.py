"""What the recommendation API knows of the catalogue and of the deployed version, as numpy arrays: item titles,
displayed and filterable attributes and a popularity ranking (`Catalogue`), and the deployed version's manifest,
item order and normalised embeddings (`ModelState`, for explanations)."""

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components.dataset import DatasetSchema
from components.encoders import ProfileEncoder
from components.errors import RecsysError
from serving import triton_repo as tr
from serving.api_models import FiltersBase, display_value


class ServiceError(RecsysError):
    """The API cannot start or serve; the message says which file or part."""


# ------------------------------------------------------------------------------------------------ catalogue
class Catalogue:
    """Item titles, the declared displayed and filterable attributes, and a popularity ranking, as numpy arrays."""

    def __init__(self, metadata: pd.DataFrame, popularity: np.ndarray, schema: DatasetSchema) -> None:
        """`metadata` sorted by item_id with title and the declared attributes; `popularity` aligned with it."""
        if not metadata["item_id"].is_monotonic_increasing:
            raise ServiceError("item metadata must be sorted by item_id")
        self.schema = schema
        self.item_ids = metadata["item_id"].to_numpy(np.int64)
        self.titles = metadata["title"].astype(str).tolist() if "title" in metadata else [None] * len(metadata)
        self.numbers: dict[str, np.ndarray] = {}  # range filters
        self.value_masks: dict[str, dict[str, np.ndarray]] = {}  # membership filters: value (lower case) -> rows
        for name, kind in schema.filterable.items():
            column = metadata[name] if name in metadata else pd.Series([None] * len(metadata))
            if kind == "range":
                self.numbers[name] = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
                continue
            masks: dict[str, np.ndarray] = {}
            for row, cell in enumerate(column):
                for value in _values(cell):
                    masks.setdefault(value.lower(), np.zeros(len(self.item_ids), bool))[row] = True
            self.value_masks[name] = masks
        self.shown = {name: [display_value(schema.item_attributes[name], v)
                             for v in (metadata[name] if name in metadata else [None] * len(metadata))]
                      for name in schema.displayed}
        self.popularity = np.asarray(popularity, np.float64)
        self.popular_rows = np.argsort(-self.popularity, kind="stable")
        # per request the API describes ~10 items: a dict look-up and a prepared row each, no array work
        self._row_of = dict(zip(self.item_ids.tolist(), range(len(self.item_ids)), strict=True))
        self._descriptions = [{"title": title, **{name: values[row] for name, values in self.shown.items()}}
                              for row, title in enumerate(self.titles)]
        self._unknown = {"title": None, **{name: display_value(schema.item_attributes[name], None)
                                           for name in self.shown}}

    @classmethod
    def from_feature_dir(cls, folder: str | Path, schema: DatasetSchema) -> "Catalogue":
        """Read item_metadata.parquet and item_popularity.parquet written by the features step."""
        folder = Path(folder)
        try:
            present = set(pq.read_schema(folder / "item_metadata.parquet").names)
            wanted = ["item_id", "title", *schema.filterable, *schema.displayed]
            meta = pd.read_parquet(folder / "item_metadata.parquet",
                                   columns=[c for c in dict.fromkeys(wanted) if c in present])
            meta = meta.sort_values("item_id").reset_index(drop=True)
            pop = pd.read_parquet(folder / "item_popularity.parquet")
            activity_ts = pd.read_parquet(folder / "user_activity.parquet", columns=["event_timestamp"])
        except (OSError, ValueError) as err:
            raise ServiceError(f"cannot read the item tables in {folder} (run `recsys features` first): {err}") from err
        return cls(meta, popularity_scores(meta["item_id"].to_numpy(np.int64), pop,
                                           activity_ts["event_timestamp"].max()), schema)

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Catalogue row of each item key, -1 for keys without metadata."""
        ids = np.asarray(item_ids, np.int64)
        pos = np.searchsorted(self.item_ids, ids).clip(0, max(len(self.item_ids) - 1, 0))
        found = (self.item_ids[pos] == ids) if len(self.item_ids) else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)

    def mask(self, filters: FiltersBase | None) -> np.ndarray | None:
        """Rows that pass the filters (None when no filter is set)."""
        if filters is None or not filters.active():
            return None
        keep = np.ones(len(self.item_ids), bool)
        for name, accepted in filters.memberships().items():
            any_value = np.zeros(len(self.item_ids), bool)
            for value in accepted:
                found = self.value_masks[name].get(value.lower())
                if found is not None:
                    any_value |= found
            keep &= any_value
        with np.errstate(invalid="ignore"):
            for name, (low, high) in filters.ranges().items():
                if low is not None:
                    keep &= self.numbers[name] >= low
                if high is not None:
                    keep &= self.numbers[name] <= high
        return keep

    def popular(self, k: int, exclude: set[int], mask: np.ndarray | None) -> list[tuple[int, float]]:
        """The k most popular items that pass the mask and are not excluded."""
        out = []
        for row in self.popular_rows:
            if mask is not None and not mask[row]:
                continue
            item = int(self.item_ids[row])
            if item in exclude:
                continue
            out.append((item, float(self.popularity[row])))
            if len(out) == k:
                break
        return out

    def title(self, item_id: int) -> str | None:
        row = self._row_of.get(int(item_id), -1)
        return None if row < 0 else self.titles[row]

    def describe(self, item_id: int) -> dict[str, Any]:
        """Title and displayed attributes of an item key (empty values for keys without metadata)."""
        row = self._row_of.get(int(item_id), -1)
        return dict(self._descriptions[row] if row >= 0 else self._unknown)


def _values(cell: Any) -> list[str]:
    """The values of a categorical or multi-valued cell."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    if isinstance(cell, str):
        return [cell]
    return [str(v) for v in cell]


def popularity_scores(item_ids: np.ndarray, table: pd.DataFrame, as_of: Any) -> np.ndarray:
    """Events per item in the longest popularity window before the data's last event (as_of), ties broken
    by the item's peak count in that window; items without rows score 0."""
    windows = sorted((int(c[len("item_popularity_"):-1]), c) for c in table.columns
                     if c.startswith("item_popularity_") and c.endswith("d"))
    if not windows:
        raise ServiceError("item_popularity.parquet has no item_popularity_<days>d column")
    column = windows[-1][1]
    ordered = table.sort_values(["item_id", "event_timestamp"], kind="stable")
    current = ordered[ordered["event_timestamp"] <= as_of].groupby("item_id")[column].last()
    peak = ordered.groupby("item_id")[column].max()
    top = float(peak.max()) if len(peak) else 0.0
    score = current.reindex(item_ids).fillna(0).to_numpy(np.float64)
    return score + peak.reindex(item_ids).fillna(0).to_numpy(np.float64) / (top + 1.0)


# ------------------------------------------------------------------------------------------- model state
@dataclass(frozen=True)
class ModelState:
    """What the API needs of the deployed version: manifest, catalogue order, normalised item embeddings."""

    version: int
    model_version: str
    manifest: dict[str, Any]
    sorted_ids: np.ndarray
    sorted_rows: np.ndarray
    unit_embeddings: np.ndarray

    @classmethod
    def load(cls, repo_dir: str | Path, version: int) -> "ModelState":
        bundle = tr.version_bundle(repo_dir, version)
        folder = Path(repo_dir) / tr.TOPK / str(version)
        ids = np.load(folder / "item_ids.npy")
        emb = np.load(folder / "item_embeddings.npy").astype(np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        order = np.argsort(ids, kind="stable")
        return cls(version, str(bundle.manifest["model_version"]), bundle.manifest, ids[order], order,
                   emb / np.maximum(norms, 1e-12))

    @property
    def n_items(self) -> int:
        return len(self.sorted_ids)

    @cached_property
    def profile_encoder(self) -> ProfileEncoder:
        """The version's profile encoder (manifest["profile_encoder"]), built once, not per request."""
        return ProfileEncoder.from_dict(self.manifest["profile_encoder"])

    def rows(self, item_ids: list[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(item_ids, np.int64)
        if not len(ids):
            return np.zeros(0, np.int64)
        pos = np.searchsorted(self.sorted_ids, ids).clip(0, self.n_items - 1)
        return np.where(self.sorted_ids[pos] == ids, self.sorted_rows[pos], -1)

    def closest(self, items: list[int], recent: list[int]) -> list[tuple[int | None, float]]:
        """For each item, the recent item with the most similar embedding (cosine) and the similarity."""
        recent_rows = self.rows(recent)
        keep = recent_rows >= 0
        if not keep.any():
            return [(None, 0.0)] * len(items)
        recent_ids = np.asarray(recent, np.int64)[keep]
        item_rows = self.rows(items)
        sims = self.unit_embeddings[np.maximum(item_rows, 0)] @ self.unit_embeddings[recent_rows[keep]].T
        best = sims.argmax(axis=1)
        return [(int(recent_ids[j]), float(sims[i, j])) if item_rows[i] >= 0 else (None, 0.0)
                for i, j in enumerate(best)]
