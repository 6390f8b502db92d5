"""Request and response models of the recommendation API (pydantic, unknown fields refused)."""

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_K = 100
MAX_ID = 2**62  # ids are int64 in every table; keeps JSON numbers inside what SQLite and Triton accept


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filters(_Strict):
    """Which items may be recommended: any of `genres`, released in [year_min, year_max]."""

    genres: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=32, description="Keep items that have at least one of these genres.")
    year_min: int | None = Field(default=None, ge=0, le=9999, description="Earliest release year (inclusive).")
    year_max: int | None = Field(default=None, ge=0, le=9999, description="Latest release year (inclusive).")

    @model_validator(mode="after")
    def _ordered_years(self) -> "Filters":
        if self.year_min is not None and self.year_max is not None and self.year_min > self.year_max:
            raise ValueError(f"filters.year_min ({self.year_min}) is after filters.year_max ({self.year_max})")
        return self

    def active(self) -> bool:
        return bool(self.genres) or self.year_min is not None or self.year_max is not None


class Profile(_Strict):
    """A profile for users the feature store does not know (cold start); every field optional."""

    age: int | None = Field(default=None, ge=0, le=130)
    gender: str | None = Field(default=None, min_length=1, max_length=32)
    occupation: str | None = Field(default=None, min_length=1, max_length=64)


class RecommendRequest(_Strict):
    """POST /recommend body."""

    user_id: int = Field(ge=0, le=MAX_ID, description="The user to recommend for.")
    k: int = Field(default=10, ge=1, le=MAX_K, description=f"How many items (1..{MAX_K}).")
    exclude_seen: bool = Field(default=True, description="Leave out the user's recent items.")
    filters: Filters | None = None
    profile: Profile | None = Field(default=None, description="Used when the user is unknown (cold start).")


class InteractionRequest(_Strict):
    """POST /interactions body: one user-item event."""

    user_id: int = Field(ge=0, le=MAX_ID)
    item_id: int = Field(ge=0, le=MAX_ID)
    rating: float | None = Field(default=None, ge=0.0, le=10.0, allow_inf_nan=False)
    event_timestamp: datetime | None = Field(default=None, description="ISO time with zone; default now (UTC).")


class RecommendedItem(BaseModel):
    item_id: int
    rank: int
    score: float
    title: str | None = None
    year: int | None = None
    genres: list[str] = Field(default_factory=list)
    explanation: str
    closest_recent_item_id: int | None = None
    source: str = Field(description="model | popularity")


class RecommendResponse(BaseModel):
    request_id: str
    user_id: int
    model_version: str
    cold_start: bool
    degraded: bool
    reasons: list[str] = Field(default_factory=list, description="Why the response is degraded or cold start.")
    items: list[RecommendedItem]
    timings_ms: dict[str, float]


class InteractionResponse(BaseModel):
    user_id: int
    item_id: int
    logged: bool
    pushed: bool
    degraded: bool
    recent_item_ids: list[int] = Field(default_factory=list)
    reason: str | None = None
