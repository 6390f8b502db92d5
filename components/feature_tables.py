"""Feature tables: what Feast serves, computed from the validated canonical tables (pure pandas).

- user_profile: the declared user attributes (and the band of each bucketed one), valid from before the
  user's first event;
- user_activity: one row per (user, distinct event time) holding the state AFTER the events at that time;
- item_metadata: title, text and the declared item attributes (multi-valued ones as lists);
- item_popularity: event counts in rolling windows [t - w, t), one row per change point.
"""

from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.dataset import MULTI_VALUE_SEPARATOR, DatasetSchema, bucket_label
from components.errors import RecsysError

UNKNOWN = "unknown"
BAND_SUFFIX = "_band"  # a bucketed attribute `x` also has the feature `x_band` (its label)
FEATURE_TABLES = ("user_profile", "user_activity", "item_metadata", "item_popularity")


class FeatureTableError(RecsysError):
    """The canonical tables cannot be turned into feature tables; the message names the table and column."""


def popularity_column(days: int) -> str:
    """Name of the popularity feature over `days` days (as in definitions.popularity_feature)."""
    return f"item_popularity_{days}d"


def band_column(name: str) -> str:
    """The feature holding the band label of bucketed attribute `name`."""
    return f"{name}{BAND_SUFFIX}"


def profile_feature_names(schema: DatasetSchema) -> list[str]:
    """The `user_profile` features of a data set: each declared attribute, and its band when bucketed."""
    names = []
    for name, attr in schema.user_attributes.items():
        names.append(name)
        if attr.kind == "bucketed":
            names.append(band_column(name))
    return names


def _numeric(values: pd.Series) -> pd.Series:
    """Integral numbers as nullable Int64, others as float64."""
    numbers = pd.to_numeric(values, errors="coerce")
    present = numbers.dropna()
    if (present == present.round()).all():
        return pd.Series(pd.array(numbers.round(), dtype="Int64"), index=values.index)
    return numbers.astype("float64")


def _categories(values: pd.Series) -> np.ndarray:
    return values.astype(object).where(values.notna(), UNKNOWN).astype(str).to_numpy()


def _valid_from(created: pd.Series, first_event: pd.Series) -> pd.Series:
    """Profiles and metadata hold from before the entity's first event (its creation precedes it)."""
    first = first_event.reindex(created.index)
    return created.where(first.isna() | (created < first), first) - pd.Timedelta(seconds=1)


def utc_us(ts: pd.Series) -> pd.Series:
    return pd.to_datetime(ts, utc=True).astype("datetime64[us, UTC]")


def user_profile_table(users: pd.DataFrame, interactions: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """One row per user: the declared attributes (and band labels), valid from before the first event."""
    for name in schema.user_attributes:
        if name not in users.columns:
            raise FeatureTableError(f"users table: missing declared attribute column '{name}' "
                                    f"(dataset.user_attributes.{name})")
    first = interactions.groupby("user_id")["event_timestamp"].min()
    users = users.set_index("user_id")
    out = pd.DataFrame({"user_id": users.index.astype("int64")})
    for name, attr in schema.user_attributes.items():
        out[name] = _numeric(users[name]).reset_index(drop=True) if attr.is_numeric else _categories(users[name])
        if attr.kind == "bucketed":
            out[band_column(name)] = [bucket_label(v, attr.edges) or UNKNOWN for v in users[name].tolist()]
    if not schema.user_attributes:  # Feast needs one feature in the view
        out["profile_known"] = 1
    out["event_timestamp"] = utc_us(_valid_from(users["created_timestamp"], first)).array
    return out


def user_activity_table(interactions: pd.DataFrame, last_n: int) -> pd.DataFrame:
    """One row per (user, distinct event time): the user's activity AFTER all events at that time."""
    df = interactions.sort_values(["user_id", "event_timestamp", "item_id"], kind="stable").reset_index(drop=True)
    by_user = df.groupby("user_id", sort=False)
    rated = df["rating"].notna()
    count = by_user.cumcount().to_numpy() + 1
    rated_count = rated.astype("int64").groupby(df["user_id"]).cumsum().to_numpy()
    rating_sum = df["rating"].astype("float64").fillna(0.0).groupby(df["user_id"]).cumsum().to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(rated_count > 0, rating_sum / np.maximum(rated_count, 1), np.nan)
    keep = ~df.duplicated(["user_id", "event_timestamp"], keep="last").to_numpy()
    users, items = df["user_id"].to_numpy(), df["item_id"].to_numpy()
    recent: list[list[int]] = []
    window: deque[int] = deque(maxlen=last_n)
    previous = None
    for i in range(len(df)):
        if users[i] != previous:
            window.clear()
            previous = users[i]
        window.append(int(items[i]))
        if keep[i]:
            recent.append(list(window))
    ts = utc_us(df["event_timestamp"])
    out = pd.DataFrame({
        "user_id": users[keep].astype("int64"),
        "event_timestamp": ts[keep].array,
        "user_interaction_count": count[keep].astype("int64"),
        "user_rated_count": rated_count[keep].astype("int64"),
        "user_mean_rating": mean[keep].astype("float64"),
        "user_last_event_epoch_s": (ts[keep].astype("int64") / 1e6).to_numpy(),
    })
    out["recent_item_ids"] = recent
    return out


def item_metadata_table(items: pd.DataFrame, interactions: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """One row per item: title, text, the declared attributes (multi-valued ones as lists), valid from before
    the first event."""
    first = interactions.groupby("item_id")["event_timestamp"].min()
    items = items.set_index("item_id")
    out = pd.DataFrame({"item_id": items.index.astype("int64"), "title": items["title"].astype(str).to_numpy(),
                        "text": items["text"].astype(str).to_numpy()})
    for name, attr in schema.item_attributes.items():
        if name not in items.columns:
            raise FeatureTableError(f"items table: missing declared attribute column '{name}' "
                                    f"(dataset.item_attributes.{name})")
        if attr.is_numeric:
            out[name] = _numeric(items[name]).reset_index(drop=True)
        elif attr.kind == "multi_categorical":
            out[name] = [[g for g in v.split(MULTI_VALUE_SEPARATOR) if g] if isinstance(v, str) else []
                         for v in items[name]]
        else:
            out[name] = _categories(items[name])
    out["event_timestamp"] = utc_us(_valid_from(items["created_timestamp"], first)).array
    return out


def item_popularity_table(interactions: pd.DataFrame, windows_days: list[int] | tuple[int, ...]) -> pd.DataFrame:
    """Rows at every change point of each item's event counts in windows [t - w, t): an event at time e adds
    one from e on and removes it from e + w on, so a point-in-time look-up strictly before t is exact."""
    if not windows_days:
        raise FeatureTableError("features.popularity_windows_days is empty: give at least one window")
    base = interactions.groupby(["item_id", "event_timestamp"]).size().rename("n").reset_index()
    cols = [popularity_column(w) for w in windows_days]
    parts = [base.assign(**{c: base["n"] for c in cols})]
    for w, col in zip(windows_days, cols, strict=True):
        leave = base.assign(event_timestamp=base["event_timestamp"] + pd.Timedelta(days=w))
        parts.append(leave.assign(**{c: (-leave["n"] if c == col else 0) for c in cols}))
    deltas = pd.concat(parts, ignore_index=True).groupby(["item_id", "event_timestamp"], sort=True)[cols].sum()
    counts = deltas.groupby(level="item_id").cumsum().astype("int64").reset_index()
    counts["event_timestamp"] = utc_us(counts["event_timestamp"])
    return counts[["item_id", "event_timestamp", *cols]]


def compute_feature_tables(tables: dict[str, pd.DataFrame], last_n: int, windows_days: list[int] | tuple[int, ...],
                           schema: DatasetSchema) -> dict[str, pd.DataFrame]:
    """All derived feature tables from the validated canonical tables of a data set declared by `schema`."""
    inter = tables["interactions"]
    if inter.empty:
        raise FeatureTableError("interactions table is empty: no features to compute")
    return {
        "user_profile": user_profile_table(tables["users"], inter, schema),
        "user_activity": user_activity_table(inter, last_n),
        "item_metadata": item_metadata_table(tables["items"], inter, schema),
        "item_popularity": item_popularity_table(inter, windows_days),
    }


def _is_list_column(values: pd.Series) -> bool:
    return values.dtype == object and any(isinstance(v, list) for v in values.head(1000))


def _table_schema(name: str, df: pd.DataFrame) -> pa.Schema:
    fields = []
    for col in df.columns:
        if col == "recent_item_ids":
            fields.append(pa.field(col, pa.list_(pa.int64())))
        elif _is_list_column(df[col]):  # multi-valued attributes
            fields.append(pa.field(col, pa.list_(pa.string())))
        elif col == "event_timestamp":
            fields.append(pa.field(col, pa.timestamp("us", tz="UTC")))
        else:
            fields.append(pa.field(col, pa.Schema.from_pandas(df[[col]], preserve_index=False).field(col).type))
    return pa.schema(fields)


def write_feature_tables(feature_tables: dict[str, pd.DataFrame], folder: str | Path) -> Path:
    """Write each table as `<name>.parquet` (µs UTC timestamps, typed list columns)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in feature_tables.items():
        table = pa.Table.from_pandas(df, schema=_table_schema(name, df), preserve_index=False)
        pq.write_table(table, folder / f"{name}.parquet")
    return folder
