"""Online side of the feature store: the `serving` and `items` feature services read for one request (the API's
fast path) and new interactions folded into a user's activity row and pushed to the online store at once. The
feature step (components.features) builds the store these functions read.

The `serving` reads go through each feature view's `OnlineStore.online_read` (the interface every Feast online
store implements: SQLite, Redis, ...) instead of `FeatureStore.get_online_features`, whose response assembly
(request protos, per-value statuses and timestamps, the dict conversion) cost 3 to 7 times the read itself per
key; the values are the same (tests/components/test_features.py compares them for every user on both stores)."""

import math
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from components.errors import RecsysError
from components.feature_tables import SECONDS_PER_DAY, utc_us

if TYPE_CHECKING:
    from feast import FeatureStore

_SERVICES: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()
PUSH_SOURCE = "user_activity_push"  # definitions.USER_ACTIVITY_PUSH
ACTIVITY_COLUMNS = ("user_interaction_count", "user_mean_rating", "user_days_since_last", "recent_item_ids")


class FeatureStoreError(RecsysError):
    """The feature store cannot do what was asked; the message says which table, view or entity."""


def int_list(value: Any) -> list[int]:
    """A list-valued feature (None or NaN when absent) as a list of ints."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [int(v) for v in value]


def _online_dict(store: "FeatureStore", features: Any, rows: list[dict[str, int]]) -> dict[str, list]:
    try:
        return store.get_online_features(features=features, entity_rows=rows).to_dict()
    except Exception as err:  # Feast raises many types (registry, connection); name the store in the message
        raise FeatureStoreError(f"online look-up failed in the {store.config.online_store.type} online store: "
                                f"{err}") from err


def _service_views(store: "FeatureStore", name: str) -> list[tuple[Any, list[str]]]:
    """(feature view, its feature names) of a feature service, resolved once per store."""
    services = _SERVICES.setdefault(store, {})
    key = f"__views__{name}"
    if key not in services:
        views = {view.name: view for view in store.list_feature_views(allow_cache=True)}
        services[key] = [(views[p.name], [f.name for f in p.features])
                         for p in feature_service(store, name).feature_view_projections]
    return services[key]


def _read_service(store: "FeatureStore", name: str, join_key: str, ids: list[int]) -> dict[str, list]:
    """A feature service's values for int64 entity keys, read view by view from the online store: feature name ->
    one value per id (None where the entity or the value is absent), as `get_online_features(...).to_dict()`."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type

    keys = [EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=i)]) for i in ids]
    out: dict[str, list] = {join_key: list(ids)}
    try:
        online_store = store._get_provider().online_store  # the configured store (Feast has no public getter)
        for view, names in _service_views(store, name):
            rows = online_store.online_read(config=store.config, table=view, entity_keys=keys,
                                            requested_features=list(names))  # the Redis store appends to it
            for feature in names:
                out[feature] = [None if data is None or feature not in data
                                else feast_value_type_to_python_type(data[feature]) for _, data in rows]
    except Exception as err:  # Feast raises many types (registry, connection); name the store in the message
        raise FeatureStoreError(f"online look-up failed in the {store.config.online_store.type} online store: "
                                f"{err}") from err
    return out


def feature_service(store: "FeatureStore", name: str) -> Any:
    """A feature service, deserialized once per store (Feast rebuilds it on every registry read)."""
    services = _SERVICES.setdefault(store, {})
    if name not in services:
        services[name] = store.get_feature_service(name, allow_cache=True)
    return services[name]


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def online_feature_rows(store: "FeatureStore", user_ids: list[int] | int,
                        as_of: datetime | None = None) -> list[dict[str, Any]]:
    """The `serving` feature service for one or more users, as plain dicts (the API's fast path).

    Each row holds the `user_profile` features (the declared attributes and band labels; None for unknown
    users), then count (0), mean rating and recency (NaN) and `recent_item_ids` ([]);
    `user_days_since_last` is measured to `as_of` (default now).
    """
    ids = [int(user_ids)] if isinstance(user_ids, int | np.integer) else [int(u) for u in user_ids]
    raw = _read_service(store, "serving", "user_id", ids)
    profile = profile_features(store)
    now_s = (as_of or datetime.now(UTC)).timestamp()
    rows = []
    for i, uid in enumerate(ids):
        last = raw["user_last_event_epoch_s"][i]
        rows.append({
            "user_id": uid, **{name: raw[name][i] for name in profile},
            "user_interaction_count": int(raw["user_interaction_count"][i] or 0),
            "user_mean_rating": _float_or_nan(raw["user_mean_rating"][i]),
            "user_days_since_last": math.nan if last is None else (now_s - last) / SECONDS_PER_DAY,
            "recent_item_ids": int_list(raw["recent_item_ids"][i]),
        })
    return rows


def profile_features(store: "FeatureStore") -> dict[str, str]:
    """The `user_profile` features of the registered repository: name -> Feast value type name."""
    services = _SERVICES.setdefault(store, {})
    if "__profile__" not in services:
        view = store.get_feature_view("user_profile", allow_registry_cache=True)
        services["__profile__"] = {f.name: str(f.dtype) for f in view.features if f.name != "profile_known"}
    return services["__profile__"]


def online_features(store: "FeatureStore", user_ids: list[int] | int, as_of: datetime | None = None) -> pd.DataFrame:
    """`online_feature_rows` as a DataFrame (integer profile features as nullable Int64)."""
    profile = profile_features(store)
    frame = pd.DataFrame(online_feature_rows(store, user_ids, as_of),
                         columns=["user_id", *profile, *ACTIVITY_COLUMNS])
    for name, dtype in profile.items():
        if "Int" in dtype:
            frame[name] = frame[name].astype("Int64")
    return frame


def online_item_features(store: "FeatureStore", item_ids: list[int]) -> pd.DataFrame:
    """The `items` feature service (metadata, popularity) for items; unknown items come back as None/<NA>,
    a known item without events in the windows with popularity 0."""
    ids = [int(i) for i in item_ids]
    raw = _online_dict(store, feature_service(store, "items"), [{"item_id": i} for i in ids])
    known = [title is not None for title in raw["title"]]
    out = pd.DataFrame({"item_id": pd.Series(ids, dtype="int64")})
    for key, values in raw.items():
        if key.startswith("item_popularity_"):  # no change point within the TTL = no events in the windows
            values = [0 if v is None and k else v for v, k in zip(values, known, strict=True)]
        if key.startswith("item_popularity_") or (values and all(isinstance(v, int) or v is None for v in values)
                                                   and any(isinstance(v, int) for v in values)):
            out[key] = pd.array(values, dtype="Int64")
        elif key != "item_id":
            out[key] = values
    return out


def push_interaction(store: "FeatureStore", user_id: int, item_id: int, rating: float | None = None,
                     event_timestamp: datetime | None = None, last_n: int = 20) -> dict[str, Any]:
    """Fold one new interaction into the user's online activity row (count, mean rating, last-N items)
    and push it to the online store through the `user_activity_push` source. No retraining, no batch job.

    Read-modify-write: concurrent pushes for the same user may lose one update (acceptable for features).
    Returns the row that was pushed.
    """
    from feast.data_source import PushMode

    ts = pd.Timestamp(event_timestamp or datetime.now(UTC))
    ts = ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)
    # the cached `serving` service holds every user_activity feature: one fast online read
    raw = _read_service(store, "serving", "user_id", [int(user_id)])
    cur = {k: v[0] for k, v in raw.items()}
    count, rated = int(cur["user_interaction_count"] or 0), int(cur["user_rated_count"] or 0)
    mean = cur["user_mean_rating"]
    if rating is not None and not math.isnan(rating):
        mean = ((mean or 0.0) * rated + float(rating)) / (rated + 1)
        rated += 1
    recent = (int_list(cur["recent_item_ids"]) + [int(item_id)])[-last_n:]
    last = max(ts.timestamp(), cur["user_last_event_epoch_s"] or -math.inf)
    row = {"user_id": int(user_id), "event_timestamp": ts, "user_interaction_count": count + 1,
           "user_rated_count": rated, "user_mean_rating": float("nan") if mean is None else float(mean),
           "user_last_event_epoch_s": float(last), "recent_item_ids": recent}
    frame = pd.DataFrame([row])
    frame["event_timestamp"] = utc_us(frame["event_timestamp"])
    store.push(PUSH_SOURCE, frame, to=PushMode.ONLINE)
    return row
