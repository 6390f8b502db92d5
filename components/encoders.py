"""Declared attributes -> the integer indices the model embeds, defined once for every runtime.

Training, evaluation, compression checks, the Triton steps and the API encode a user's profile and an item's
metadata with these two encoders; their vocabularies travel in the model artifact and the serving bundle's
manifest (`to_dict` / `from_dict`), so a value means the same index everywhere. Index 0 is "unknown".

- user attributes: categorical -> its value; bucketed -> its band label; numeric -> a quantile band;
- item attributes: categorical -> one index; multi-valued -> several (0-padded); numeric with few distinct
  integral values (e.g. a count or a calendar value) -> the value as a category, other numbers -> a quantile band.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.dataset import MULTI_VALUE_SEPARATOR, Attribute, DatasetSchema, bucket_label

PROFILE_ENCODER_FILE = "profile_encoder.json"  # a model artifact's ProfileEncoder (to_dict)
UNKNOWN_VALUES = {"", "unknown", "nan", "None", "<NA>"}
QUANTILE_BANDS = 16  # bands of a numeric attribute without declared edges
MAX_VALUE_CATEGORIES = 200  # an integral numeric attribute with at most this many values is a category


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating) and np.isnan(value):
        return True
    return value is pd.NA or value is pd.NaT or str(value) in UNKNOWN_VALUES


def _quantile_edges(values: pd.Series, bands: int = QUANTILE_BANDS) -> list[float]:
    numbers = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=np.float64)
    if not len(numbers):
        return [0.0]
    edges = np.unique(np.quantile(numbers, np.linspace(0, 1, bands + 1)[1:-1]))
    return [float(e) for e in edges] or [float(numbers[0])]


@dataclass
class FieldCode:
    """How one attribute becomes indices: `kind` value | band | multi; vocab {label: index >= 1}."""

    source: str  # the attribute's name in the tables / requests
    kind: str
    vocab: dict[str, int]
    edges: list[float] = field(default_factory=list)

    def label(self, value: Any) -> str | None:
        if _missing(value):
            return None
        if self.kind == "band":
            return bucket_label(value, self.edges)
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        return str(value)

    def index(self, value: Any) -> int:
        label = self.label(value)
        return 0 if label is None else self.vocab.get(label, 0)

    def indices(self, value: Any) -> list[int]:
        """Every index of a multi-valued cell (a '|'-joined string or a list), unknown values dropped."""
        if _missing(value) if not isinstance(value, list | tuple | np.ndarray) else False:
            return []
        parts = value if isinstance(value, list | tuple | np.ndarray) else str(value).split(MULTI_VALUE_SEPARATOR)
        return [self.vocab[p] for p in (str(v) for v in parts) if p in self.vocab]


def _fit_field(name: str, attr: Attribute, values: pd.Series, *, item: bool) -> FieldCode:
    present = values[~values.map(_missing)] if len(values) else values
    if attr.kind == "bucketed":
        code = FieldCode(name, "band", {}, [float(e) for e in attr.edges or []])
        labels = [bucket_label(v, code.edges) for v in (attr.edges[0] - 1, *attr.edges)]
        code.vocab = {label: i + 1 for i, label in enumerate(labels)}
        return code
    if attr.kind == "numeric":
        numbers = pd.to_numeric(present, errors="coerce").dropna()
        integral = bool(len(numbers)) and bool((numbers == numbers.round()).all())
        if item and integral and numbers.nunique() <= MAX_VALUE_CATEGORIES:
            labels = sorted({str(int(v)) for v in numbers})
            return FieldCode(name, "value", {label: i + 1 for i, label in enumerate(labels)})
        code = FieldCode(name, "band", {}, _quantile_edges(numbers))
        labels = [bucket_label(v, code.edges) for v in (code.edges[0] - 1, *code.edges)]
        code.vocab = {label: i + 1 for i, label in enumerate(dict.fromkeys(labels))}
        return code
    if attr.kind == "multi_categorical":
        labels = sorted({p for cell in present for p in (cell if isinstance(cell, list | tuple | np.ndarray)
                                                        else str(cell).split(MULTI_VALUE_SEPARATOR)) if p})
        return FieldCode(name, "multi", {label: i + 1 for i, label in enumerate(labels)})
    labels = sorted({str(v) for v in present} - UNKNOWN_VALUES)
    return FieldCode(name, "value", {label: i + 1 for i, label in enumerate(labels)})


def _to_dict(codes: list[FieldCode]) -> dict[str, Any]:
    return {"fields": [{"source": c.source, "kind": c.kind, "vocab": c.vocab, "edges": c.edges} for c in codes]}


def _from_dict(data: Mapping[str, Any]) -> list[FieldCode]:
    return [FieldCode(f["source"], f["kind"], {str(k): int(v) for k, v in f["vocab"].items()},
                      [float(e) for e in f.get("edges", [])]) for f in data["fields"]]


@dataclass
class ProfileEncoder:
    """A user's declared attributes -> int64 indices, one per attribute, in declaration order."""

    codes: list[FieldCode]

    @classmethod
    def fit(cls, users: pd.DataFrame, schema: DatasetSchema) -> ProfileEncoder:
        """Vocabularies from the users table (bands from the declared edges)."""
        return cls([_fit_field(name, attr, users[name] if name in users else pd.Series([], dtype=object),
                               item=False) for name, attr in schema.user_attributes.items()])

    @property
    def fields(self) -> list[str]:
        return [c.source for c in self.codes]

    @property
    def sizes(self) -> list[int]:
        """Embedding rows each field needs (vocabulary + the unknown index 0)."""
        return [len(c.vocab) + 1 for c in self.codes]

    def encode(self, rows: pd.DataFrame | Iterable[Mapping[str, Any]]) -> np.ndarray:
        """int64 [n, fields]: each row's attribute values (missing columns or keys -> 0)."""
        if isinstance(rows, pd.DataFrame):
            columns = {c.source: rows[c.source].tolist() if c.source in rows else [None] * len(rows)
                       for c in self.codes}
            n = len(rows)
        else:
            rows = list(rows)
            columns = {c.source: [r.get(c.source) for r in rows] for c in self.codes}
            n = len(rows)
        out = np.zeros((n, len(self.codes)), dtype=np.int64)
        for j, code in enumerate(self.codes):
            out[:, j] = [code.index(v) for v in columns[code.source]]
        return out

    def encode_one(self, profile: Mapping[str, Any]) -> list[int]:
        """One profile's indices in field order (0 for missing or unseen values)."""
        return [code.index(profile.get(code.source)) for code in self.codes]

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self.codes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileEncoder:
        return cls(_from_dict(data))


@dataclass
class ItemEncoder:
    """An item's declared attributes -> int64 indices: one column per single-valued attribute, then the
    0-padded values of each multi-valued one (`widths` columns each)."""

    codes: list[FieldCode]
    widths: list[int]

    @classmethod
    def fit(cls, items: pd.DataFrame, schema: DatasetSchema) -> ItemEncoder:
        codes = [_fit_field(name, attr, items[name] if name in items else pd.Series([], dtype=object), item=True)
                 for name, attr in schema.item_attributes.items()]
        widths = []
        for code in codes:
            if code.kind == "multi":
                cells = items[code.source] if code.source in items else []
                widths.append(max([1, *(len(code.indices(v)) for v in cells)]))
            else:
                widths.append(1)
        return cls(codes, widths)

    @property
    def sizes(self) -> list[int]:
        return [len(c.vocab) + 1 for c in self.codes]

    def encode(self, items: pd.DataFrame) -> list[np.ndarray]:
        """One int64 [n, width] array per attribute (width 1 for single-valued ones)."""
        out = []
        for code, width in zip(self.codes, self.widths, strict=True):
            values = items[code.source].tolist() if code.source in items else [None] * len(items)
            block = np.zeros((len(items), width), dtype=np.int64)
            for i, value in enumerate(values):
                got = code.indices(value) if code.kind == "multi" else [code.index(value)]
                block[i, : min(width, len(got))] = got[:width]
            out.append(block)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**_to_dict(self.codes), "widths": self.widths}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemEncoder:
        return cls(_from_dict(data), [int(w) for w in data["widths"]])
