"""Feast definitions of the recommender's features: entities, sources, feature views, feature services.

`feast apply` imports this file and registers the module-level objects (sources under ./data, relative
to this repository). Python code calls `build_definitions(source_dir, popularity_windows, user_fields,
item_fields)` to get the same objects pointing at any folder. The profile and metadata fields are the data
set's declared attributes: the features step passes them; `feast apply` reads them from the feature tables
under ./data. This module imports nothing of the project: only Feast and pyarrow.

Every feature row is stamped with the time from which its value holds, so a point-in-time join never
lets a later value reach an earlier event:
- user_profile: valid from before the user's first interaction (the sign-up).
- user_activity: one row per (user, distinct event time) holding the state AFTER the events at that time.
- item_popularity: one row per change point (an event enters or leaves a window); counts over [t - w, t);
  no row within the longest window (TTL) means every count is 0.
"""

import json
import os
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float64, Int64, String

# A declared attribute's value type in the feature tables, by name (what the features step passes).
FIELD_TYPES = {"int64": Int64, "float64": Float64, "string": String, "string_list": Array(String)}

PROJECT = "recsys"
DEFAULT_POPULARITY_WINDOWS = (7, 30)
USER_PROFILE_FILE = "user_profile.parquet"
USER_ACTIVITY_FILE = "user_activity.parquet"
ITEM_METADATA_FILE = "item_metadata.parquet"
ITEM_POPULARITY_FILE = "item_popularity.parquet"
FIELDS_FILE = "feature_fields.json"  # the declared fields, written beside the tables by the features step
FIELDS_ENV = "RECSYS_FEATURE_FIELDS"  # where a deployment without the tables (a feature server) reads them
USER_ACTIVITY_PUSH = "user_activity_push"
NO_TTL = timedelta(0)  # values hold until replaced; rows are stamped exactly where they change


def popularity_feature(days: int) -> str:
    """Column name of the item popularity over a window of `days` days."""
    return f"item_popularity_{days}d"


def build_definitions(source_dir: str = "data", popularity_windows: tuple[int, ...] = DEFAULT_POPULARITY_WINDOWS,
                      user_fields: tuple[tuple[str, str], ...] = (), item_fields: tuple[tuple[str, str], ...] = ()):
    """All Feast objects, with file sources in `source_dir` (relative paths resolve against the repo).

    `user_fields` / `item_fields`: (name, type) of the profile and metadata columns, type one of FIELD_TYPES.
    """
    def fields(pairs: tuple[tuple[str, str], ...]) -> list[Field]:
        return [Field(name=name, dtype=FIELD_TYPES[kind]) for name, kind in pairs]

    def source(name: str, file: str) -> FileSource:
        return FileSource(name=f"{name}_source", path=str(Path(source_dir) / file),
                          timestamp_field="event_timestamp")

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A person who rates.")
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="A catalogue item.")

    user_profile = FeatureView(
        name="user_profile", entities=[user], ttl=NO_TTL, online=True,
        source=source("user_profile", USER_PROFILE_FILE),
        schema=fields(user_fields) or [Field(name="profile_known", dtype=Int64)],
        description="The declared attributes of a user (and the band of each bucketed one).",
    )
    activity_batch = source("user_activity", USER_ACTIVITY_FILE)
    activity_push = PushSource(name=USER_ACTIVITY_PUSH, batch_source=activity_batch,
                               description="New interactions reach the online store without retraining.")
    user_activity = FeatureView(
        name="user_activity", entities=[user], ttl=NO_TTL, online=True, source=activity_push,
        schema=[Field(name="user_interaction_count", dtype=Int64),
                Field(name="user_rated_count", dtype=Int64),
                Field(name="user_mean_rating", dtype=Float64),
                Field(name="user_last_event_epoch_s", dtype=Float64),
                Field(name="recent_item_ids", dtype=Array(Int64))],
        description="A user's activity after all of their events up to the row's timestamp.",
    )
    item_metadata = FeatureView(
        name="item_metadata", entities=[item], ttl=NO_TTL, online=True,
        source=source("item_metadata", ITEM_METADATA_FILE),
        schema=[Field(name="title", dtype=String), Field(name="text", dtype=String), *fields(item_fields)],
        description="Catalogue metadata of an item: title, text and the declared attributes.",
    )
    # A TTL of the longest window loses nothing (with no change point inside it, every count is 0: the
    # consumer reads a missing value as 0) and bounds the point-in-time join to one window of rows.
    item_popularity = FeatureView(
        name="item_popularity", entities=[item], ttl=timedelta(days=max(popularity_windows)), online=True,
        source=source("item_popularity", ITEM_POPULARITY_FILE),
        schema=[Field(name=popularity_feature(days), dtype=Int64) for days in popularity_windows],
        description="Events on the item in rolling windows [t - w, t).",
    )
    training = FeatureService(
        name="training",
        features=[user_profile,
                  user_activity[["user_interaction_count", "user_mean_rating", "user_last_event_epoch_s",
                                 "recent_item_ids"]],
                  item_popularity],
        description="Point-in-time features of each training example (user x item x time).",
    )
    serving = FeatureService(
        name="serving", features=[user_profile, user_activity],
        description="What the recommendation API reads for one or more users.",
    )
    items = FeatureService(name="items", features=[item_metadata, item_popularity],
                           description="Item metadata and popularity for display and fallbacks.")
    return [user, item, user_profile, activity_batch, activity_push, user_activity, item_metadata, item_popularity,
            training, serving, items]


def fields_in_data(path: Path, skip: set[str]) -> tuple[tuple[str, str], ...]:
    """(name, type) of a feature table's attribute columns (none before any data exists)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError):
        return ()
    out = []
    for field in schema:
        if field.name in skip:
            continue
        if str(field.type).startswith("list"):
            out.append((field.name, "string_list"))
        elif str(field.type) in ("string", "large_string"):
            out.append((field.name, "string"))
        else:
            out.append((field.name, "float64" if "double" in str(field.type) or "float" in str(field.type)
                        else "int64"))
    return tuple(out)


def _windows_in_data(source_dir: Path) -> tuple[int, ...]:
    """The popularity windows the data was computed with (the defaults before any data exists)."""
    try:
        names = pq.read_schema(source_dir / ITEM_POPULARITY_FILE).names
    except (OSError, ValueError):  # no data yet, or unreadable: the defaults
        return DEFAULT_POPULARITY_WINDOWS
    days = [int(n[len("item_popularity_"):-1]) for n in names if n.startswith("item_popularity_") and n.endswith("d")]
    return tuple(days) or DEFAULT_POPULARITY_WINDOWS


def fields_manifest(source_dir: Path) -> dict:
    """The popularity windows and the profile and metadata fields of the feature tables in `source_dir`."""
    return {
        "popularity_windows": list(_windows_in_data(source_dir)),
        "user_fields": [list(f) for f in fields_in_data(source_dir / USER_PROFILE_FILE,
                                                       {"user_id", "event_timestamp"})],
        "item_fields": [list(f) for f in fields_in_data(source_dir / ITEM_METADATA_FILE,
                                                       {"item_id", "title", "text", "event_timestamp"})],
    }


Fields = tuple[tuple[str, str], ...]


def declared_fields(source_dir: Path) -> tuple[tuple[int, ...], Fields, Fields]:
    """(windows, user fields, item fields): from the file named by $RECSYS_FEATURE_FIELDS, else the manifest
    beside the tables, else the tables' own schemas (nothing declared before any data exists)."""
    path = Path(os.environ.get(FIELDS_ENV) or source_dir / FIELDS_FILE)
    if path.is_file():
        manifest = json.loads(path.read_text(encoding="utf-8"))
    else:
        manifest = fields_manifest(source_dir)
    return (tuple(manifest["popularity_windows"]), tuple(tuple(f) for f in manifest["user_fields"]),
            tuple(tuple(f) for f in manifest["item_fields"]))


# Module-level objects for `feast apply` run inside this folder.
_WINDOWS, _USER_FIELDS, _ITEM_FIELDS = declared_fields(Path(__file__).parent / "data")
(user, item, user_profile, user_activity_source, user_activity_push, user_activity, item_metadata, item_popularity,
 training, serving, items) = build_definitions("data", _WINDOWS, _USER_FIELDS, _ITEM_FIELDS)
