"""Batch recommendations: top-K items per user from a trained model, in the DESIGN format (user_id,item_id,rank,score).

The users file and the output speak the data set's external ids (through the id maps beside the tables).

`recommend` is what `recsys recommend` calls; the top-K step itself is `components.recommender.recommend_frame`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from components.errors import RecsysError
from components.id_maps import normalise_ids

log = logging.getLogger(__name__)


class RecommendError(RecsysError, ValueError):
    """The users, history or output file cannot be used; the message names the file."""


def read_frame(path: str | Path) -> pd.DataFrame:
    """A parquet or CSV file by suffix."""
    path = Path(path)
    if not path.is_file():
        raise RecommendError(f"file not found: {path}")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".txt"):
        return pd.read_csv(path)
    raise RecommendError(f"{path}: use a .parquet or .csv file")


def write_frame(df: pd.DataFrame, path: str | Path) -> Path:
    """Write parquet or CSV by suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        raise RecommendError(f"{path}: the output must end in .parquet or .csv")
    return path


def user_histories(interactions: pd.DataFrame, user_ids: np.ndarray) -> list[np.ndarray]:
    """Each user's item ids, oldest -> newest (empty for users without interactions)."""
    ordered = interactions.sort_values(["user_id", "event_timestamp"], kind="stable")
    groups = {int(u): g.to_numpy(dtype=np.int64) for u, g in ordered.groupby("user_id", sort=False)["item_id"]}
    return [groups.get(int(u), np.empty(0, dtype=np.int64)) for u in user_ids]


def recommend_users(recommender, users: pd.DataFrame, interactions: pd.DataFrame, k: int, exclude_seen: bool,
                    profiles: pd.DataFrame | None = None, catalogue: np.ndarray | None = None) -> pd.DataFrame:
    """Top-k per user of `users` (user_id, optional profile columns); profiles fill missing profile columns."""
    from components.recommender import recommend_frame
    from components.schemas import check_recommendations

    if "user_id" not in users:
        raise RecommendError("the users file needs a user_id column")
    users = users.drop_duplicates("user_id").reset_index(drop=True)
    users["user_id"] = users["user_id"].astype("int64")
    if profiles is not None:
        missing = [c for c in profiles.columns if c not in users.columns]
        users = users.merge(profiles[["user_id", *missing]].drop_duplicates("user_id"), on="user_id", how="left")
    if catalogue is None:
        catalogue = np.asarray(recommender.item_ids, dtype=np.int64)
    histories = user_histories(interactions, users["user_id"].to_numpy())
    recs = recommend_frame(recommender, users, histories, catalogue, k, exclude_seen=exclude_seen)
    check_recommendations(recs)
    log.info("%d recommendations for %d users (k=%d, exclude_seen=%s)", len(recs), len(users), k, exclude_seen)
    return recs


def recommend(model_dir: str | Path, users_path: str | Path, canonical_dir: str | Path, k: int, exclude_seen: bool,
              out_path: str | Path, as_of: datetime | str | None = None) -> pd.DataFrame:
    """Read users + canonical tables, score with the model at `model_dir`, write `out_path`; returns the frame.

    The model's popularity priors count the interactions of the canonical table by other users before `as_of`
    (default now), as the API counts them for a request at that time."""
    from components.model import load_recommender
    from components.schemas import INTERACTIONS, USERS, table_path

    if k < 1:
        raise RecommendError(f"k must be >= 1, got {k}")
    users = read_frame(users_path)
    inter_path, users_table = table_path(canonical_dir, INTERACTIONS), table_path(canonical_dir, USERS)
    if not inter_path.is_file():
        raise RecommendError(f"no interactions table at {inter_path} (pass --canonical DIR)")
    if "user_id" not in users:
        raise RecommendError(f"{users_path}: the users file needs a user_id column")
    interactions = pd.read_parquet(inter_path)
    profiles = pd.read_parquet(users_table) if users_table.is_file() else None
    maps = _id_maps(canonical_dir, interactions)
    if maps is not None:  # the users file speaks external ids, like the API and the log
        external = normalise_ids(users["user_id"], maps["user"].id_type, f"{users_path}: user_id")
        maps["user"] = maps["user"].extended(external)  # new users get keys for this run only (cold start)
        users = users.assign(user_id=maps["user"].keys_of(external, f"{users_path}: user_id").to_numpy())
    recommender = load_recommender(model_dir)
    recommender.set_item_events(interactions)
    stamp = pd.Timestamp(datetime.now(UTC) if as_of is None else as_of)
    users = users.assign(as_of=stamp if stamp.tzinfo else stamp.tz_localize(UTC))
    recs = recommend_users(recommender, users, interactions, k, exclude_seen, profiles)
    if maps is not None:
        recs = recs.assign(user_id=maps["user"].externals_of(recs["user_id"].to_numpy()),
                           item_id=maps["item"].externals_of(recs["item_id"].to_numpy()))
    write_frame(recs, out_path)
    return recs


def _id_maps(canonical_dir: str | Path, interactions: pd.DataFrame) -> dict | None:
    """The data set's id maps beside its tables (None for tables made without them: keys are the ids)."""
    from components.id_maps import load_id_maps
    from components.schemas import ID_MAPS

    folder = Path(canonical_dir) / ID_MAPS
    if not (folder / "manifest.json").is_file():
        return None
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return load_id_maps(folder, {entity: manifest[entity]["type"] for entity in ("user", "item")})
