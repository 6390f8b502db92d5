"""Evaluation split (contract C2): temporal leave-last-out per user, plus items held out for cold start.

- Order: interactions are ordered by `event_timestamp`; events of equal timestamp (MovieLens users often rate
  many films within one second) are ordered by a seeded random key, so the split is deterministic for a seed
  and does not favour high or low item ids.
- Cold items: the `cold_start_items` items whose first interaction is latest in time (the cold-start report), and
  before them the `cold_validation_items` next-latest (where a model tunes its new-item scoring, never on the
  report's items). Every interaction on either set is removed from train/validation/test; they are
  recommendable only through their text.
- For each user with at least 3 remaining (non-cold) interactions: the last one is `test`, the one before it
  `validation`, the rest `train`. Users with fewer keep all of them in `train`.
- `cold_test` / `cold_validation`: per user who interacted with an item of the set, that user's last interaction
  on one of them. `cold_task(..., every_event=True)` ranks every interaction on the set instead (each at its own
  time): the items' whole early life, not only the moments when a user last met one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from components.errors import RecsysError

if TYPE_CHECKING:
    from components.config import Config

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
    cold_validation_items: np.ndarray
    cold_validation: pd.DataFrame
    cold_validation_interactions: pd.DataFrame

    @property
    def held_out_items(self) -> np.ndarray:
        """Every item kept out of training (cold test and cold validation), sorted."""
        return np.union1d(self.cold_items, self.cold_validation_items)

    def summary(self) -> dict[str, int]:
        """Row counts, for logs and reports."""
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
            "cold_items": len(self.cold_items),
            "cold_test": len(self.cold_test),
            "cold_validation_items": len(self.cold_validation_items),
            "cold_validation": len(self.cold_validation),
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


def pick_cold_items(ordered: pd.DataFrame, test: int, validation: int) -> tuple[np.ndarray, np.ndarray]:
    """(test, validation) cold items: the `test` items whose first interaction comes latest, then the `validation`
    items before them."""
    for name, count in (("cold_start_items", test), ("cold_validation_items", validation)):
        if count < 0:
            raise SplitError(f"{name} must be >= 0, got {count}")
    first = ordered.groupby("item_id")[_ORDER].min()
    if test + validation and test + validation >= len(first):
        raise SplitError(f"evaluate.cold_start_items={test} + evaluate.cold_validation_items={validation} leave no "
                         f"items to train on ({len(first)} items have interactions)")
    latest = first.sort_values().index.to_numpy(dtype=np.int64)[len(first) - test - validation :]
    return np.sort(latest[validation:]), np.sort(latest[:validation])


def _last_per_user(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["user_id", _ORDER], kind="stable").groupby("user_id").tail(1)


def temporal_split(interactions: pd.DataFrame, cold_start_items: int, seed: int,
                   cold_validation_items: int = 0) -> Split:
    """Split interactions per contract C2 (see the module docstring)."""
    df = _ordered(interactions, seed)
    cold_items, cold_val_items = pick_cold_items(df, cold_start_items, cold_validation_items)
    is_cold = df["item_id"].isin(cold_items).to_numpy()
    is_cold_val = df["item_id"].isin(cold_val_items).to_numpy()
    cold, cold_val = df[is_cold], df[is_cold_val]
    warm = df[~(is_cold | is_cold_val)].sort_values(["user_id", _ORDER], kind="stable")
    position_from_end = warm.groupby("user_id").cumcount(ascending=False).to_numpy()
    n_user = warm.groupby("user_id")["item_id"].transform("size").to_numpy()
    eligible = n_user >= MIN_USER_EVENTS
    test_mask = eligible & (position_from_end == 0)
    val_mask = eligible & (position_from_end == 1)

    def clean(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.drop(columns=_ORDER).reset_index(drop=True)

    return Split(
        train=clean(warm[~(test_mask | val_mask)]),
        validation=clean(warm[val_mask]),
        test=clean(warm[test_mask]),
        cold_items=cold_items,
        cold_test=clean(_last_per_user(cold)),
        cold_interactions=clean(cold),
        cold_validation_items=cold_val_items,
        cold_validation=clean(_last_per_user(cold_val)),
        cold_validation_interactions=clean(cold_val),
    )


def configured_split(interactions: pd.DataFrame, config: Config) -> Split:
    """The split every step makes (train, evaluate, compress, monitoring's reference) under one config."""
    e = config.evaluate
    return temporal_split(interactions, e.cold_start_items, config.train.seed, e.cold_validation_count)


def histories(split: Split, stage: Literal["validation", "test"]) -> dict[int, np.ndarray]:
    """Item ids each user saw before the target, oldest -> newest (train; plus the validation row for test)."""
    if stage not in ("validation", "test"):
        raise SplitError(f"stage must be 'validation' or 'test', got {stage!r}")
    frame = split.train if stage == "validation" else pd.concat([split.train, split.validation], ignore_index=True)
    # train is chronological within each user and every validation row is later than the user's train rows;
    # a stable sort by user keeps that order.
    frame = frame.sort_values("user_id", kind="stable")
    return {int(u): g.to_numpy(dtype=np.int64) for u, g in frame.groupby("user_id", sort=True)["item_id"]}


@dataclass
class ColdTask:
    """One cold-start task: each user's last interaction on a held-out item (or every interaction on them), ranked
    among the held-out items."""

    targets: pd.DataFrame  # the interactions' columns, one row per user (per event), sorted by user (then time)
    histories: list[np.ndarray]  # per target: the user's warm items strictly before it, oldest -> newest
    exclude: list[np.ndarray]  # per target: the user's earlier interactions on the held-out items
    items: np.ndarray  # the candidates: the held-out items of this stage


def cold_task(split: Split, stage: Literal["validation", "test"], every_event: bool = False) -> ColdTask:
    """The cold-start task on the cold validation or cold test items: each user's last interaction on them, or with
    `every_event` each of their interactions on them.

    Point in time like contract C1: nothing at or after the target's timestamp. Earlier held-out-item events of the
    user are not part of the history (they are excluded from the candidates instead).
    """
    if stage not in ("validation", "test"):
        raise SplitError(f"stage must be 'validation' or 'test', got {stage!r}")
    targets, events, items = ((split.cold_test, split.cold_interactions, split.cold_items) if stage == "test" else
                              (split.cold_validation, split.cold_validation_interactions, split.cold_validation_items))
    if every_event:
        targets = events.sort_values(["user_id", "event_timestamp"], kind="stable").reset_index(drop=True)
    else:
        targets = targets.sort_values("user_id", kind="stable").reset_index(drop=True)
    warm = pd.concat([split.train, split.validation, split.test], ignore_index=True)
    warm = warm.sort_values(["user_id", "event_timestamp"], kind="stable")
    by_user = {int(u): g for u, g in warm[warm["user_id"].isin(targets["user_id"])].groupby("user_id", sort=True)}
    earlier = {int(u): g for u, g in events.groupby("user_id", sort=True)}
    empty = warm.iloc[:0]
    histories, exclude = [], []
    for user, ts in zip(targets["user_id"].astype(int), targets["event_timestamp"], strict=True):
        own = by_user.get(user, empty)
        histories.append(own.loc[own["event_timestamp"] < ts, "item_id"].to_numpy(dtype=np.int64))
        seen = earlier.get(user, empty)
        exclude.append(seen.loc[seen["event_timestamp"] < ts, "item_id"].to_numpy(dtype=np.int64))
    return ColdTask(targets, histories, exclude, np.asarray(items, dtype=np.int64))
