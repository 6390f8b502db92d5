"""Contract C3: what every recommender implements, and the top-K step the evaluator and batch recommend share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from components.errors import RecsysError


class RecommenderError(RecsysError, ValueError):
    """Scores, catalogue or exclusions do not fit together; the message says how."""


@runtime_checkable
class Recommender(Protocol):
    """Scores catalogue items for users. Excluding seen items is the caller's job (see `top_k`)."""

    name: str

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        """float32 [len(users), len(catalogue)], higher = better.

        `users` has user_id and the declared user attributes; `histories[i]` holds the item ids
        user i saw, oldest -> newest; `catalogue` is an int64 array of item ids.
        """
        ...


def catalogue_positions(catalogue: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Position of each item id in `catalogue`, -1 where it is not in the catalogue."""
    catalogue = np.asarray(catalogue, dtype=np.int64)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    if len(catalogue) == 0 or len(item_ids) == 0:
        return np.full(len(item_ids), -1, dtype=np.int64)
    sorter = np.argsort(catalogue, kind="stable")
    pos = np.searchsorted(catalogue, item_ids, sorter=sorter)
    pos = np.clip(pos, 0, len(catalogue) - 1)
    found = catalogue[sorter[pos]] == item_ids
    return np.where(found, sorter[pos], -1).astype(np.int64)


def exclusion_mask(catalogue: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean [len(exclude), len(catalogue)]: True where the user's excluded items sit in the catalogue."""
    mask = np.zeros((len(exclude), len(catalogue)), dtype=bool)
    lengths = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=len(exclude))
    if lengths.sum() == 0:
        return mask
    rows = np.repeat(np.arange(len(exclude)), lengths)
    cols = catalogue_positions(catalogue, np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude]))
    keep = cols >= 0
    mask[rows[keep], cols[keep]] = True
    return mask


def check_scores(scores: np.ndarray, n_users: int, catalogue: np.ndarray, who: str = "recommender") -> np.ndarray:
    """Raise unless `scores` is [n_users, len(catalogue)] without NaN; return it as float32."""
    scores = np.asarray(scores)
    if scores.shape != (n_users, len(catalogue)):
        raise RecommenderError(f"{who}.score returned shape {scores.shape}, expected ({n_users}, {len(catalogue)})")
    if np.isnan(scores).any():
        raise RecommenderError(f"{who}.score returned NaN scores")
    return scores.astype(np.float32, copy=False)


def top_k(
    scores: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None, catalogue: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` items per row of `scores` [U, N], skipping each user's `exclude` item ids.

    Returns (item_ids int64 [U, min(k, N)], scores float32 [U, min(k, N)]), best first; equal scores keep catalogue
    order. Where a user has fewer than k candidates left, the remaining slots hold item id -1 and score -inf.
    """
    catalogue = np.asarray(catalogue, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or scores.shape[1] != len(catalogue):
        raise RecommenderError(f"scores shape {scores.shape} does not match a catalogue of {len(catalogue)} items")
    if k < 1:
        raise RecommenderError(f"k must be >= 1, got {k}")
    if exclude is not None and len(exclude) != len(scores):
        raise RecommenderError(f"exclude has {len(exclude)} entries for {len(scores)} users")
    n_users, n_items = scores.shape
    k = min(k, n_items)
    masked = scores.copy()
    invalid = np.zeros_like(masked, dtype=bool) if exclude is None else exclusion_mask(catalogue, exclude)
    masked[invalid] = -np.inf
    if n_users == 0:
        return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
    if k < n_items:
        part = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(n_items), (n_users, 1))
    part_scores = np.take_along_axis(masked, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)  # score descending, then catalogue position
    cols = np.take_along_axis(part, order, axis=1)
    out_scores = np.take_along_axis(masked, cols, axis=1)
    item_ids = catalogue[cols]
    dead = np.take_along_axis(invalid, cols, axis=1)
    item_ids[dead] = -1
    out_scores[dead] = -np.inf
    return item_ids.astype(np.int64), out_scores.astype(np.float32)


def recommend_frame(
    recommender: Recommender,
    users: pd.DataFrame,
    histories: list[np.ndarray],
    catalogue: np.ndarray,
    k: int,
    exclude_seen: bool = True,
    batch_size: int = 1024,
) -> pd.DataFrame:
    """Batch recommendations in the DESIGN format (user_id, item_id, rank, score), `batch_size` users at a time."""
    frames = []
    for start in range(0, len(users), batch_size):
        part = users.iloc[start : start + batch_size].reset_index(drop=True)
        hist = histories[start : start + batch_size]
        scores = check_scores(recommender.score(part, hist, catalogue), len(part), catalogue, recommender.name)
        ids, top = top_k(scores, k, hist if exclude_seen else None, catalogue)
        width = ids.shape[1]
        frame = pd.DataFrame(
            {
                "user_id": np.repeat(part["user_id"].to_numpy(dtype=np.int64), width),
                "item_id": ids.ravel(),
                "rank": np.tile(np.arange(1, width + 1, dtype=np.int64), len(part)),
                "score": top.ravel().astype(np.float64),
            }
        )
        frames.append(frame[frame["item_id"] >= 0])
    if not frames:
        return pd.DataFrame({"user_id": [], "item_id": [], "rank": [], "score": []}).astype(
            {"user_id": "int64", "item_id": "int64", "rank": "int64", "score": "float64"}
        )
    return pd.concat(frames, ignore_index=True)
