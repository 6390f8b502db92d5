"""Request and response models of the recommendation API, generated from the dataset declaration.

`api_models(schema)` builds them once per data set (pydantic, unknown fields refused, strict types):
- ids are the data set's external ids: integers or strings, as `user_id.type` / `item_id.type` declare;
- `filters` has one field per declared filterable item attribute: `NAME: [values]` for membership (any of),
  `NAME_min` / `NAME_max` for a numeric range;
- `profile` (cold start) has one optional field per declared user attribute, numbers within the declared
  [min, max];
- each recommended item carries its title and the declared `displayed` attributes.
An unknown filter or profile field is a 400 that names it; all of it appears in the OpenAPI document.

Nothing is coerced: a bool or a string is never a number, numbers are finite and bounded, strings are bounded and
free of control characters, and `event_timestamp` is an ISO-8601 string with a zone inside the window the
configuration allows (`RequestLimits`), so a request is refused before any side effect (Feast push, log append).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AllowInfNan,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    create_model,
    model_validator,
)

from components.dataset import Attribute, DatasetSchema, IdColumn

MAX_K = 100
MAX_ID = 2**62  # integer ids are int64 in every table; keeps JSON numbers inside what SQLite and Triton accept
MAX_ID_LENGTH = 128  # string ids
MAX_VALUES = 32  # values of one membership filter
MAX_TEXT = 64  # length of one categorical value
MAX_NUMBER = 1e15  # magnitude of any number in a request (profile and filter values without declared bounds)
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # strings: no control characters (NUL breaks PostgreSQL's JSON, logs, ...)
ISO_WITH_ZONE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Number = StrictInt | Annotated[StrictFloat, AllowInfNan(False)]  # JSON numbers only; NaN and Infinity refused
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT, pattern=PRINTABLE)]


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on request values that the configuration sets: how far an `event_timestamp` may lie before or after
    the time the API receives it (serving.event_max_age_days, serving.event_max_ahead_s)."""

    event_max_age: timedelta = timedelta(days=365)
    event_max_ahead: timedelta = timedelta(hours=1)

    @classmethod
    def from_serving(cls, serving: Any) -> RequestLimits:
        """From the `serving` section of the configuration."""
        return cls(timedelta(days=serving.event_max_age_days), timedelta(seconds=serving.event_max_ahead_s))


def _iso_with_zone(value: Any) -> datetime:
    """Only an ISO-8601 string with a zone is a time (no epoch numbers, no digits-only strings, no naive time); a
    datetime passes (Python callers; BentoML's copy of the model runs this validator twice)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or len(value) > 40 or not ISO_WITH_ZONE.fullmatch(value):
        raise ValueError("must be an ISO-8601 time with a zone, e.g. 2024-05-01T12:00:00Z")
    try:
        return datetime.fromisoformat(value)
    except ValueError as err:
        raise ValueError(f"is not a valid time: {err}") from None


def event_time_type(limits: RequestLimits) -> Any:
    """The API type of an event time: ISO-8601 with a zone, within `limits` of now, returned in UTC."""

    def in_window(value: datetime) -> datetime:
        now = datetime.now(UTC)
        if value < now - limits.event_max_age:
            raise ValueError(f"is more than {limits.event_max_age.total_seconds() / 86400:g} days in the past "
                             "(serving.event_max_age_days)")
        if value > now + limits.event_max_ahead:
            raise ValueError(f"is more than {limits.event_max_ahead.total_seconds():g} s in the future "
                             "(serving.event_max_ahead_s)")
        return value.astimezone(UTC)

    return Annotated[AwareDatetime, BeforeValidator(_iso_with_zone), AfterValidator(in_window)]


def id_type(column: IdColumn) -> Any:
    """The API type of an external id column."""
    if column.type == "int":
        return Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
    return Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=PRINTABLE, strict=True)]


def _bounds(attr: Attribute) -> dict[str, float]:
    """The declared [min, max] of a numeric attribute, within +-MAX_NUMBER."""
    low = -MAX_NUMBER if attr.min is None else max(attr.min, -MAX_NUMBER)
    high = MAX_NUMBER if attr.max is None else min(attr.max, MAX_NUMBER)
    return {"ge": low, "le": high}


class FiltersBase(_Strict):
    """Which items may be recommended (every given condition holds)."""

    def active(self) -> bool:
        return any(v is not None and v != [] for v in self.model_dump().values())

    def ranges(self) -> dict[str, tuple[float | None, float | None]]:
        """attribute -> (min, max) of the range filters given."""
        out = {}
        for name in type(self).range_attributes:
            low, high = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if low is not None or high is not None:
                out[name] = (low, high)
        return out

    def memberships(self) -> dict[str, list[str]]:
        """attribute -> accepted values of the membership filters given."""
        return {name: getattr(self, name) for name in type(self).membership_attributes if getattr(self, name)}

    @model_validator(mode="after")
    def _ordered(self) -> FiltersBase:
        for name, (low, high) in self.ranges().items():
            if low is not None and high is not None and low > high:
                raise ValueError(f"filters.{name}_min ({low}) is above filters.{name}_max ({high})")
        return self


def filters_model(schema: DatasetSchema) -> type[FiltersBase]:
    fields: dict[str, Any] = {}
    for name, kind in schema.filterable.items():
        attr = schema.item_attributes[name]
        if kind == "membership":
            fields[name] = (list[Text] | None, Field(None, max_length=MAX_VALUES,
                                                     description=f"Keep items with at least one of these {name}."))
        else:
            fields[f"{name}_min"] = (Number | None, Field(None, description=f"Lowest {name} (inclusive).",
                                                          **_bounds(attr)))
            fields[f"{name}_max"] = (Number | None, Field(None, description=f"Highest {name} (inclusive).",
                                                          **_bounds(attr)))
    model = create_model("Filters", __base__=FiltersBase, **fields)
    model.membership_attributes = tuple(n for n, k in schema.filterable.items() if k == "membership")
    model.range_attributes = tuple(n for n, k in schema.filterable.items() if k == "range")
    return model


def profile_model(schema: DatasetSchema) -> type[_Strict]:
    fields: dict[str, Any] = {}
    for name, attr in schema.user_attributes.items():
        if attr.is_numeric:
            fields[name] = (Number | None, Field(None, **_bounds(attr)))
        else:
            hint = f" ({', '.join(attr.categories)})" if attr.categories else ""
            fields[name] = (Text | None, Field(None, description=f"{name}{hint}"))
    return create_model("Profile", __base__=_Strict, __doc__="The declared user attributes of a user the feature "
                        "store does not know (cold start); every field optional.", **fields)


def displayed_type(attr: Attribute) -> Any:
    if attr.kind == "multi_categorical":
        return list[str]
    return (int | float | None) if attr.is_numeric else (str | None)


def display_value(attr: Attribute, value: Any) -> Any:
    """A table cell as the API shows it: lists for multi-valued, ints for integral numbers, None for missing."""
    if attr.kind == "multi_categorical":
        return [str(v) for v in value] if value is not None and not isinstance(value, float) else []
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if attr.is_numeric:
        number = float(value)
        return int(number) if number.is_integer() else number
    return str(value)


@dataclass(frozen=True)
class ApiModels:
    """The API's request and response models for one data set."""

    Filters: type[FiltersBase]
    Profile: type[BaseModel]
    RecommendRequest: type[BaseModel]
    InteractionRequest: type[BaseModel]
    RecommendedItem: type[BaseModel]
    RecommendResponse: type[BaseModel]
    InteractionResponse: type[BaseModel]


_BUILT: dict[tuple[str, RequestLimits], ApiModels] = {}


def api_models(schema: DatasetSchema, limits: RequestLimits | None = None) -> ApiModels:
    """The models for `schema` (built once per declaration and limits: the same ones give the same classes)."""
    key = (schema.model_dump_json(), limits or RequestLimits())
    if key not in _BUILT:
        _BUILT[key] = _build(schema, key[1])
    return _BUILT[key]


def _build(schema: DatasetSchema, limits: RequestLimits) -> ApiModels:
    user_id, item_id = id_type(schema.user_id), id_type(schema.item_id)
    filters, profile = filters_model(schema), profile_model(schema)
    recommend = create_model(
        "RecommendRequest", __base__=_Strict, __doc__="POST /recommend body.",
        user_id=(user_id, Field(description="The user to recommend for (the data set's own id).")),
        k=(Annotated[StrictInt, Field(ge=1, le=MAX_K)], Field(10, description=f"How many items (1..{MAX_K}).")),
        exclude_seen=(StrictBool, Field(True, description="Leave out the user's recent items.")),
        diversity=(Annotated[Number, Field(ge=0.0, le=1.0)] | None, Field(
            None, description="MMR re-ranking strength over item embeddings: 0 = the model's ranking, 1 = most varied; "
            "default trust.diversity.")),
        filters=(filters | None, None),
        profile=(profile | None, Field(None, description="Used when the user is unknown (cold start).")))
    rating = schema.feedback
    interaction = create_model(
        "InteractionRequest", __base__=_Strict, __doc__="POST /interactions body: one user-item event.",
        user_id=(user_id, ...), item_id=(item_id, ...),
        rating=(Number | None, Field(None, ge=rating.min if rating.min is not None else 0.0,
                                     le=rating.max if rating.max is not None else 10.0)),
        event_timestamp=(event_time_type(limits) | None, Field(
            None, description=f"ISO-8601 time with a zone, at most {limits.event_max_age.days} days ago and "
            f"{limits.event_max_ahead.total_seconds():g} s ahead; default now.")))
    shown = {name: (displayed_type(schema.item_attributes[name]), Field(default_factory=list)
                    if schema.item_attributes[name].kind == "multi_categorical" else None)
             for name in schema.displayed}
    item = create_model(
        "RecommendedItem", item_id=(id_type(schema.item_id), ...), rank=(int, ...), score=(float, ...),
        title=(str | None, None), **shown, explanation=(str, ...),
        closest_recent_item_id=(id_type(schema.item_id) | None, None),
        source=(str, Field(description="model | popularity")))
    response = create_model(
        "RecommendResponse", request_id=(str, ...), user_id=(user_id, ...), model_version=(str, ...),
        cold_start=(bool, ...), degraded=(bool, ...),
        reasons=(list[str], Field(default_factory=list, description="Why the response is degraded or cold start.")),
        items=(list[item], ...), timings_ms=(dict[str, float], ...))
    interaction_response = create_model(
        "InteractionResponse", user_id=(user_id, ...), item_id=(item_id, ...), logged=(bool, ...),
        pushed=(bool, ...), degraded=(bool, ...), recent_item_ids=(list[item_id], Field(default_factory=list)),
        reason=(str | None, None))
    return ApiModels(filters, profile, recommend, interaction, item, response, interaction_response)
