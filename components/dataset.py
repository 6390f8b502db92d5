"""The dataset declaration: which columns a team's files hold and what each one means.

A data set is a declaration, not code. One `dataset:` section of the configuration (or a schema file it
names with `preset:`) says where the ids, the event time and the feedback are, which user and item
attributes exist and of which kind, how the text the language model reads is composed, what the API may
filter on and show, which user attributes define fairness groups, and which users the closed-loop replay
(`recsys simulate`) holds out as its new cohort. Every step reads it from here.

    dataset:
      preset: movielens            # a packaged preset (components/datasets/NAME.yaml) or a schema file path
      # keys given beside `preset` are merged into it; `preset: null` declares the data set from scratch

Presets live in `components/datasets/`; `recsys data synth` writes a schema file for the data it makes.
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PRESETS_DIR = Path(__file__).with_name("datasets")
MULTI_VALUE_SEPARATOR = "|"  # how multi-valued attributes are stored in the canonical tables
RESERVED_COLUMNS = {"user_id", "item_id", "rating", "event_timestamp", "created_timestamp", "title", "text"}
# a group of users by one attribute: "<attribute><op><value>", e.g. "segment=vip", "tenure_days<90"
COHORT_EXPRESSION = re.compile(r"\s*(\w+)\s*(<=|>=|!=|=|<|>)\s*(.+?)\s*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdColumn(_Strict):
    """An entity's external id column in the source files; mapped to dense int64 keys at ingest."""

    column: str = Field(description="column holding the external id in the source file")
    type: Literal["int", "string"] = Field(description="int: integral ids; string: any text id")


class EventTime(_Strict):
    column: str = "event_timestamp"
    unit: Literal["s", "ms", "us"] = Field("s", description="unit of numeric (epoch) timestamps")
    timezone: str = Field("UTC", description="zone of timestamps written without one (IANA name)")


class Feedback(_Strict):
    """explicit: a rating in [min, max]; implicit: every event counts 1; events: a weight per event type."""

    kind: Literal["explicit", "implicit", "events"]
    column: str | None = Field(None, description="rating column (explicit) or event-type column (events)")
    min: float | None = None
    max: float | None = None
    weights: dict[str, float] | None = Field(None, description="events: weight of each event type")

    @model_validator(mode="after")
    def _complete(self) -> Feedback:
        if self.kind == "explicit" and (self.column is None or self.min is None or self.max is None):
            raise ValueError("explicit feedback needs column, min and max")
        if self.kind == "explicit" and self.min >= self.max:  # type: ignore[operator]
            raise ValueError(f"explicit feedback: min {self.min} must be below max {self.max}")
        if self.kind == "events" and (self.column is None or not self.weights):
            raise ValueError("events feedback needs column and weights (event type -> weight)")
        if self.kind == "events" and any(w <= 0 or not math.isfinite(w) for w in self.weights.values()):
            raise ValueError("events feedback: every weight must be a positive number")
        return self


class Attribute(_Strict):
    """A user or item attribute.

    categorical: one value from `categories` (when declared; `on_unknown` says what other values do);
    multi_categorical: several values in one cell, split on `separator` (items only);
    numeric: a number, optionally within [min, max]; bucketed: a number grouped by the ascending `edges`.
    """

    kind: Literal["categorical", "multi_categorical", "numeric", "bucketed"]
    column: str | None = Field(None, description="source column (default: the attribute's name)")
    categories: list[str] | None = None
    on_unknown: Literal["error", "other"] = Field(
        "error", description="a value outside `categories`: fail validation, or map it to 'other'")
    separator: str = "|"
    min: float | None = None
    max: float | None = None
    edges: list[float] | None = None
    missing_text: str = Field("unknown", description="what the text template shows for a missing value")

    @model_validator(mode="after")
    def _complete(self) -> Attribute:
        if self.kind == "bucketed" and (not self.edges or list(self.edges) != sorted(set(self.edges))):
            raise ValueError("bucketed attributes need strictly ascending edges")
        if self.kind != "bucketed" and self.edges:
            raise ValueError(f"edges apply to bucketed attributes, not {self.kind}")
        if self.kind in ("categorical", "multi_categorical") and (self.min is not None or self.max is not None):
            raise ValueError(f"min/max apply to numbers, not {self.kind}")
        if self.kind in ("numeric", "bucketed") and self.categories:
            raise ValueError(f"categories apply to categorical attributes, not {self.kind}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.categories and any(MULTI_VALUE_SEPARATOR in c for c in self.categories):
            raise ValueError(f"categories may not contain '{MULTI_VALUE_SEPARATOR}'")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.kind in ("numeric", "bucketed")


class DatasetSchema(_Strict):
    """One data set's declaration (see the module docstring and components/datasets/movielens.yaml)."""

    name: str
    description: str = ""
    user_id: IdColumn
    item_id: IdColumn
    event_time: EventTime = EventTime()
    feedback: Feedback
    item_title: str = Field("title", description="item column shown as the title")
    user_created: str = Field("created_timestamp", description="users column with the sign-up time, if any")
    item_created: str = Field("created_timestamp", description="items column with the listing time, if any")
    user_attributes: dict[str, Attribute] = {}
    item_attributes: dict[str, Attribute] = {}
    text_template: str = Field(description="the text the language model reads: {title} and {attribute} fields")
    filterable: dict[str, Literal["membership", "range"]] = Field(
        {}, description="item attributes the API may filter on: membership (categorical) or range (numeric)")
    displayed: list[str] = Field([], description="item attributes the API returns with each item")
    fairness_groups: list[str] = Field([], description="user attributes whose groups fairness compares")
    replay_cohort: str | None = Field(
        None, description="users `recsys simulate` holds out until its shift: '<attribute><op><value>' over a "
        "declared user attribute (its --cohort overrides it)")

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSchema:
        for side, attrs in (("user_attributes", self.user_attributes), ("item_attributes", self.item_attributes)):
            clash = sorted(set(attrs) & RESERVED_COLUMNS)
            if clash:
                raise ValueError(f"{side}: {clash} are canonical column names; pick other attribute names")
        if any(a.kind == "multi_categorical" for a in self.user_attributes.values()):
            raise ValueError("user_attributes: multi_categorical is for item attributes")
        fields = template_fields(self.text_template)
        unknown = sorted(fields - {"title"} - set(self.item_attributes))
        if unknown:
            raise ValueError(f"text_template names {unknown}, which are not declared item attributes")
        for name, kind in self.filterable.items():
            attr = self.item_attributes.get(name)
            if attr is None:
                raise ValueError(f"filterable: '{name}' is not a declared item attribute")
            if (kind == "range") != attr.is_numeric:
                raise ValueError(f"filterable: '{name}' is {attr.kind}; use "
                                 f"{'range' if attr.is_numeric else 'membership'}")
        unknown = sorted(set(self.displayed) - set(self.item_attributes))
        if unknown:
            raise ValueError(f"displayed: {unknown} are not declared item attributes")
        for name in self.fairness_groups:
            attr = self.user_attributes.get(name)
            if attr is None:
                raise ValueError(f"fairness_groups: '{name}' is not a declared user attribute")
            if attr.kind == "numeric":
                raise ValueError(f"fairness_groups: '{name}' is numeric; declare it bucketed with edges")
        if self.replay_cohort is not None:
            match = COHORT_EXPRESSION.fullmatch(self.replay_cohort)
            if not match:
                raise ValueError(f"replay_cohort: {self.replay_cohort!r} is not '<attribute><op><value>' "
                                 "(op one of = != < <= > >=)")
            if match.group(1) not in self.user_attributes:
                raise ValueError(f"replay_cohort: '{match.group(1)}' is not a declared user attribute")
        return self

    def source_column(self, side: Literal["users", "items"], name: str) -> str:
        """The column of the source file that holds attribute `name`."""
        attrs = self.user_attributes if side == "users" else self.item_attributes
        return attrs[name].column or name


def template_fields(template: str) -> set[str]:
    """The {field} names a text template uses."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as err:
        raise ValueError(f"text_template is not a valid template: {err}") from err


def bucket_label(value: object, edges: list[float] | tuple[float, ...]) -> str | None:
    """The band of `value` for exclusive upper `edges`: '<18', '18-24', ..., '56+'; None when unknown."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if number != number or not edges:
        return None

    def show(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    lower: float | None = None
    for upper in edges:
        if number < upper:
            if lower is None:
                return f"<{show(upper)}"
            integral = float(lower).is_integer() and float(upper).is_integer()
            return f"{show(lower)}-{show(upper - 1)}" if integral else f"{show(lower)}-{show(upper)}"
        lower = upper
    return f"{show(edges[-1])}+"


UNKNOWN_GROUP = "unknown"  # the group of users whose attribute value is missing


def group_labels(values: pd.Series | list, attr: Attribute) -> list[str]:
    """The group of each value of a user attribute (evaluation and monitoring fairness): the band of a
    bucketed number, the value itself otherwise, UNKNOWN_GROUP where it is missing."""
    out = []
    for value in values:
        if attr.kind == "bucketed":
            out.append(bucket_label(value, attr.edges or []) or UNKNOWN_GROUP)
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            out.append(UNKNOWN_GROUP)
        else:
            out.append(str(value.item() if hasattr(value, "item") else value))
    return out


def group_order(label: str) -> tuple[int, float, str]:
    """Sort key of group labels: bands by their lower edge, then other values alphabetically, unknown last."""
    band = re.fullmatch(r"<(-?[\d.]+)|(-?[\d.]+)(?:-(-?[\d.]+)|\+)", label)
    if band:
        return (0, -math.inf if band.group(1) else float(band.group(2)), label)
    return (2 if label == UNKNOWN_GROUP else 1, 0.0, label)


def bucket_labels(edges: list[float] | tuple[float, ...]) -> tuple[str, ...]:
    """Every band label of `edges`, lowest first."""
    return tuple(bucket_label(v, edges) for v in (edges[0] - 1, *edges))  # type: ignore[misc]


def _read_schema_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as err:
        raise ValueError(f"dataset schema file not found: {path}") from err
    except yaml.YAMLError as err:
        raise ValueError(f"dataset schema file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"dataset schema file {path} must hold a mapping")
    return data.get("dataset", data) if isinstance(data.get("dataset"), dict) else data


def preset_path(preset: str) -> Path:
    """A packaged preset's file, or `preset` itself read as a path."""
    packaged = PRESETS_DIR / f"{preset}.yaml"
    return packaged if packaged.is_file() else Path(preset)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) \
            else value
    return out


def resolve_dataset(section: dict[str, Any]) -> dict[str, Any]:
    """The `dataset:` section with its preset expanded: keys given beside `preset` are merged into the preset's
    (mappings key by key, other values replaced); `preset: null` declares a data set from scratch."""
    section = dict(section or {})
    preset = section.pop("preset", None)
    if not preset:
        return section
    base = _read_schema_file(preset_path(str(preset)))
    base.pop("preset", None)
    return _deep_merge(base, section)
