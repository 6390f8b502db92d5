"""Evaluation split (contract C2): temporal leave-last-out per user, plus items held out for cold start.

- Order: interactions are ordered by `event_timestamp`; events of equal timestamp (MovieLens users often rate
  many films within one second) are ordered by a seeded random key, so the split is deterministic for a seed
  and does not favour high or low item ids.
- Cold items: the `cold_start_items` items whose first interaction is latest in time. Every interaction on them is
  removed from train/validation/test; they are recommendable only through their text (the cold-start report).
- For each user with at least 3 remaining (non-cold) interactions: the last one is `test`, the one before it
  `validation`, the rest `train`. Users with fewer keep all of them in `train`.
- `cold_test`: per user who interacted with a cold item, that user's last cold-item interaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from components.errors import RecsysError

MIN_USER_EVENTS = 3
_ORDER = "_order"


class SplitError(RecsysError, ValueError):
    """The interactions cannot be split as asked; the message says why."""


@dataclass
class Split:
    """Contract C2. Frames keep the interactions' columns; `train` is chronological within each user."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    cold_items: np.ndarray
    cold_test: pd.DataFrame
    cold_interactions: pd.DataFrame  # every interaction on a cold item, chronological (for point-in-time popularity)

    def summary(self) -> dict[str, int]:
        """Row counts, for logs and reports."""
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
            "cold_items": len(self.cold_items),
            "cold_test": len(self.cold_test),
            "train_users": int(self.train["user_id"].nunique()),
            "train_items": int(self.train["item_id"].nunique()),
        }


def _ordered(interactions: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Chronological order with seeded random tie-breaking, independent of the input row order."""
    missing = {"user_id", "item_id", "event_timestamp"} - set(interactions.columns)
    if missing:
        raise SplitError(f"interactions lack column(s) {sorted(missing)}")
    df = interactions.sort_values(["event_timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    tiebreak = np.random.default_rng(seed).permutation(len(df))
    ts = df["event_timestamp"].to_numpy()
    order = np.lexsort((tiebreak, ts))
    df = df.iloc[order].reset_index(drop=True)
    df[_ORDER] = np.arange(len(df), dtype=np.int64)
    return df


def pick_cold_items(ordered: pd.DataFrame, count: int) -> np.ndarray:
    """The `count` items whose first interaction comes latest (ties: higher item id first)."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    first = ordered.groupby("item_id")[_ORDER].min()
    if count >= len(first):
        raise SplitError(
            f"evaluate.cold_start_items={count} leaves no items to train on ({len(first)} items have interactions)"
        )
    return np.sort(first.sort_values(kind="stable").index.to_numpy()[-count:]).astype(np.int64)


def temporal_split(interactions: pd.DataFrame, cold_start_items: int, seed: int) -> Split:
    """Split interactions per contract C2 (see the module docstring)."""
    if cold_start_items < 0:
        raise SplitError(f"cold_start_items must be >= 0, got {cold_start_items}")
    df = _ordered(interactions, seed)
    cold_items = pick_cold_items(df, cold_start_items)
    is_cold = df["item_id"].isin(cold_items).to_numpy()
    cold = df[is_cold]
    warm = df[~is_cold].sort_values(["user_id", _ORDER], kind="stable")
    position_from_end = warm.groupby("user_id").cumcount(ascending=False).to_numpy()
    n_user = warm.groupby("user_id")["item_id"].transform("size").to_numpy()
    eligible = n_user >= MIN_USER_EVENTS
    test_mask = eligible & (position_from_end == 0)
    val_mask = eligible & (position_from_end == 1)
    cold_test = cold.sort_values(["user_id", _ORDER], kind="stable").groupby("user_id").tail(1)

    def clean(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.drop(columns=_ORDER).reset_index(drop=True)

    return Split(
        train=clean(warm[~(test_mask | val_mask)]),
        validation=clean(warm[val_mask]),
        test=clean(warm[test_mask]),
        cold_items=cold_items,
        cold_test=clean(cold_test),
        cold_interactions=clean(cold),
    )


def histories(split: Split, stage: Literal["validation", "test"]) -> dict[int, np.ndarray]:
    """Item ids each user saw before the target, oldest -> newest (train; plus the validation row for test)."""
    if stage not in ("validation", "test"):
        raise SplitError(f"stage must be 'validation' or 'test', got {stage!r}")
    frame = split.train if stage == "validation" else pd.concat([split.train, split.validation], ignore_index=True)
    # train is chronological within each user and every validation row is later than the user's train rows;
    # a stable sort by user keeps that order.
    frame = frame.sort_values("user_id", kind="stable")
    return {int(u): g.to_numpy(dtype=np.int64) for u, g in frame.groupby("user_id", sort=True)["item_id"]}


def cold_histories(split: Split) -> dict[int, np.ndarray]:
    """For each user of `cold_test`: the user's non-cold items strictly before the cold target, oldest -> newest.

    Point in time like contract C1: nothing at or after the target's timestamp. Earlier cold-item events of the
    user are not part of the history (the evaluator excludes them from the candidates instead).
    """
    frame = pd.concat([split.train, split.validation, split.test], ignore_index=True)
    frame = frame.sort_values(["user_id", "event_timestamp"], kind="stable")
    target_ts = split.cold_test.set_index("user_id")["event_timestamp"]
    out: dict[int, np.ndarray] = {int(u): np.empty(0, dtype=np.int64) for u in target_ts.index}
    frame = frame[frame["user_id"].isin(target_ts.index)]
    frame = frame[frame["event_timestamp"].to_numpy() < target_ts.loc[frame["user_id"]].to_numpy()]
    for user, items in frame.groupby("user_id", sort=True)["item_id"]:
        out[int(user)] = items.to_numpy(dtype=np.int64)
    return out
