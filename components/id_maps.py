"""Append-only maps between a data set's external ids (ints or strings) and the int64 keys every table,
model, feature row and log entry uses. A key never changes once given: re-ingests and retrains append new
ids, so Feast rows, model tables and logged requests stay joinable.

String ids get dense keys 1, 2, ... in order of arrival (sorted within one ingest). Integer ids are their
own keys (they must be >= 1: key 0 pads histories), so a team's integer ids read the same in every table;
the map still records them and catches a hand edit.

Layout of a maps folder: `user_ids.parquet`, `item_ids.parquet` (columns `external_id`, `key`) and
`manifest.json` with each file's row count and SHA-256, which catches a map edited by hand.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from components.atomic import atomic_path, write_json_atomic
from components.schemas import SchemaError

Entity = Literal["user", "item"]
ENTITIES: tuple[Entity, ...] = ("user", "item")
MANIFEST = "manifest.json"
FIRST_KEY = 1  # key 0 stays free: the model pads histories with it


class IdMapError(SchemaError):
    """An id map is inconsistent, was edited by hand, or does not cover an id; names the file and ids."""


def map_path(folder: str | Path, entity: Entity) -> Path:
    return Path(folder) / f"{entity}_ids.parquet"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def normalise_ids(values: pd.Series, id_type: Literal["int", "string"], where: str) -> pd.Series:
    """External ids as int64 (type int) or str (type string); raises naming `where` for nulls or bad ints."""
    if values.isna().any():
        raise IdMapError(f"{where}: {int(values.isna().sum())} missing id(s)")
    if id_type == "string":
        out = values.astype(str)
        empty = out[out.str.strip() == ""]
        if len(empty):
            raise IdMapError(f"{where}: {len(empty)} empty id(s)")
        return out.astype(object)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[numbers.isna() | (numbers != numbers.round())]
    if len(bad):
        raise IdMapError(f"{where}: {len(bad)} id(s) are not integers, e.g. {bad.head(3).tolist()} "
                         f"(declare type: string for text ids)")
    small = values[numbers < FIRST_KEY]
    if len(small):
        raise IdMapError(f"{where}: integer ids must be >= {FIRST_KEY} (0 pads histories), e.g. "
                         f"{small.head(3).tolist()}; declare type: string to map them to keys")
    return numbers.astype("int64")


@dataclass(frozen=True)
class IdMap:
    """One entity's map (`table`: external_id, key): dense keys for string ids, the ids themselves for ints."""

    entity: Entity
    id_type: Literal["int", "string"]
    table: pd.DataFrame  # external_id, key

    @classmethod
    def empty(cls, entity: Entity, id_type: Literal["int", "string"]) -> IdMap:
        dtype = "int64" if id_type == "int" else object
        return cls(entity, id_type, pd.DataFrame({"external_id": pd.Series([], dtype=dtype),
                                                  "key": pd.Series([], dtype="int64")}))

    def __len__(self) -> int:
        return len(self.table)

    def extended(self, external_ids: pd.Series) -> IdMap:
        """This map plus any ids not in it yet, appended (sorted) after the last key."""
        known = pd.Index(self.table["external_id"])
        new = pd.Series(pd.unique(external_ids[~external_ids.isin(known)]))
        if not len(new):
            return self
        new = new.sort_values(kind="stable").reset_index(drop=True)
        if self.id_type == "int":
            keys = new.to_numpy(dtype=np.int64)
        else:
            start = int(self.table["key"].max()) + 1 if len(self.table) else FIRST_KEY
            keys = np.arange(start, start + len(new), dtype=np.int64)
        added = pd.DataFrame({"external_id": new.astype(self.table["external_id"].dtype), "key": keys})
        return IdMap(self.entity, self.id_type, pd.concat([self.table, added], ignore_index=True))

    def keys_of(self, external_ids: pd.Series, where: str) -> pd.Series:
        """The key of each external id; raises naming `where` and the unknown ids."""
        lookup = pd.Series(self.table["key"].to_numpy(), index=pd.Index(self.table["external_id"]))
        keys = external_ids.map(lookup)
        unknown = external_ids[keys.isna()]
        if len(unknown):
            raise IdMapError(f"{where}: {len(unknown)} id(s) not in the {self.entity} id map, "
                             f"e.g. {pd.unique(unknown)[:3].tolist()}")
        return keys.astype("int64")

    def externals_of(self, keys: np.ndarray | list[int]) -> list:
        """The external id of each key (what the API, the log and batch recommendations speak)."""
        lookup = pd.Series(self.table["external_id"].to_numpy(), index=pd.Index(self.table["key"]))
        found = lookup.reindex(np.asarray(keys, dtype=np.int64))
        if found.isna().any():
            raise IdMapError(f"keys {found[found.isna()].index[:3].tolist()} are not in the {self.entity} id map")
        return found.tolist()

    def check(self, where: str) -> None:
        """Raise IdMapError unless external ids and keys are each unique, keys >= FIRST_KEY, and keys are
        the ids (int) or FIRST_KEY..n (string)."""
        dup = self.table["external_id"][self.table["external_id"].duplicated()]
        if len(dup):
            raise IdMapError(f"{where}: external id(s) {dup.head(3).tolist()} appear more than once")
        keys = self.table["key"].to_numpy()
        if self.id_type == "int":
            if not np.array_equal(keys, self.table["external_id"].to_numpy(dtype=np.int64)):
                raise IdMapError(f"{where}: an integer id must be its own key")
        elif not np.array_equal(np.sort(keys), np.arange(FIRST_KEY, FIRST_KEY + len(keys), dtype=np.int64)):
            raise IdMapError(f"{where}: keys must be {FIRST_KEY}..{len(keys)} each once")


def load_id_maps(folder: str | Path, id_types: dict[Entity, Literal["int", "string"]]) -> dict[Entity, IdMap]:
    """The maps in `folder` (empty maps when it has none), checked against their manifest and invariants."""
    folder = Path(folder)
    manifest_file = folder / MANIFEST
    manifest = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else {}
    maps: dict[Entity, IdMap] = {}
    for entity in ENTITIES:
        path = map_path(folder, entity)
        entry = manifest.get(entity)
        if entry is None and not path.exists():
            maps[entity] = IdMap.empty(entity, id_types[entity])
            continue
        if entry is None or not path.is_file():
            raise IdMapError(f"{path}: the {entity} id map and {manifest_file} disagree (one of them is missing)")
        if entry["sha256"] != _digest(path):
            raise IdMapError(f"{path} was changed outside ingest (its SHA-256 differs from {manifest_file}): keys "
                             "must never change; restore the file, or delete the folder to start a new key space "
                             "(and retrain every model)")
        if entry["type"] != id_types[entity]:
            raise IdMapError(f"{path} holds {entry['type']} ids but the dataset declares {entity}_id type "
                             f"{id_types[entity]}")
        table = pd.read_parquet(path)
        id_map = IdMap(entity, id_types[entity], table)
        id_map.check(str(path))
        maps[entity] = id_map
    return maps


def save_id_maps(folder: str | Path, maps: dict[Entity, IdMap]) -> Path:
    """Write the maps and their manifest (each file written to a temporary name, then renamed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for entity, id_map in maps.items():
        id_map.check(f"{entity} id map")
        path = map_path(folder, entity)
        with atomic_path(path) as tmp:
            id_map.table.to_parquet(tmp, index=False)
        manifest[entity] = {"rows": len(id_map), "type": id_map.id_type, "sha256": _digest(path)}
    write_json_atomic(folder / MANIFEST, manifest)
    return folder


class ExternalIds:
    """External id <-> key look-ups for one entity where ids arrive one at a time (the API, the log reader):
    an integer id is its own key, a string id goes through the map; an unknown string id has no key."""

    def __init__(self, id_map: IdMap) -> None:
        self.entity, self.id_type = id_map.entity, id_map.id_type
        if self.id_type == "string":
            externals = id_map.table["external_id"].astype(str).tolist()
            keys = id_map.table["key"].astype("int64").tolist()
            self._keys = dict(zip(externals, keys, strict=True))
            self._externals = dict(zip(keys, externals, strict=True))

    def __len__(self) -> int:
        return len(self._keys) if self.id_type == "string" else 0

    def key(self, external: int | str) -> int | None:
        """The key of an external id; None for a string id the map does not hold yet."""
        if self.id_type == "int":
            return int(external) if int(external) >= FIRST_KEY else None
        return self._keys.get(str(external))

    def external(self, key: int) -> int | str:
        """The external id of a key (KeyError naming the key when the map lacks it)."""
        if self.id_type == "int":
            return int(key)
        try:
            return self._externals[int(key)]
        except KeyError:
            raise IdMapError(f"key {key} is not in the {self.entity} id map") from None

    def keys(self, externals: pd.Series) -> pd.Series:
        """The key of each external id, -1 where it has none (never joins a canonical row)."""
        if self.id_type == "int":
            numbers = pd.to_numeric(externals, errors="coerce")
            return numbers.where(numbers >= FIRST_KEY, -1).fillna(-1).astype("int64")
        return externals.astype(str).map(self._keys).fillna(-1).astype("int64")
