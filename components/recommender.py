"""Contract C3: what every recommender implements, the recommender over a user tower, and batch top-K lists
(the top-K step itself is `components.bundle_ops.top_k`, shared with serving)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from components.bundle_ops import ItemIndex, history_tensor, top_k
from components.encoders import ProfileEncoder
from components.errors import RecsysError

log = logging.getLogger(__name__)


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
    return ItemIndex(catalogue).rows(item_ids)


def check_scores(scores: np.ndarray, n_users: int, catalogue: np.ndarray, who: str = "recommender") -> np.ndarray:
    """Raise unless `scores` is [n_users, len(catalogue)] without NaN; return it as float32."""
    scores = np.asarray(scores)
    if scores.shape != (n_users, len(catalogue)):
        raise RecommenderError(f"{who}.score returned shape {scores.shape}, expected ({n_users}, {len(catalogue)})")
    if np.isnan(scores).any():
        raise RecommenderError(f"{who}.score returned NaN scores")
    return scores.astype(np.float32, copy=False)


class TowerRecommender:
    """Contract C3 over a user tower: each user's history and profile become the tower's input tensors
    (`components.bundle_ops.history_tensor`, the profile encoder), the tower maps them to user vectors, and an item
    scores the dot product of its vector with the user's (-inf for catalogue items without a vector).

    `tower(history [B, L], profile [B, P]) -> float32 [B, D]` is the torch model in training, the saved model, or an
    ONNX Runtime session; users go through it `batch_size` at a time.
    """

    def __init__(self, name: str, tower: Callable[[np.ndarray, np.ndarray], np.ndarray], item_ids: np.ndarray,
                 item_embeddings: np.ndarray, profile_encoder: ProfileEncoder, max_seq_len: int,
                 batch_size: int) -> None:
        self.name, self.tower, self.profile_encoder = name, tower, profile_encoder
        self.max_seq_len, self.batch_size = int(max_seq_len), int(batch_size)
        self.set_item_table(item_ids, item_embeddings)

    def set_item_table(self, item_ids: np.ndarray, item_embeddings: np.ndarray) -> None:
        """The items this recommender can score: ids (catalogue rows) and their vectors float32 [N, D]."""
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.item_embeddings = np.asarray(item_embeddings, dtype=np.float32)
        self.index = ItemIndex(self.item_ids)

    def tower_inputs(self, users: pd.DataFrame, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The tower's inputs: (history int64 [B, max_seq_len], catalogue row + 1 of the latest known items,
        left-padded with 0; profile int64 [B, P], the declared user attributes as vocabulary indices, 0 = unknown)."""
        return history_tensor(self.index, histories, self.max_seq_len), self.profile_encoder.encode(users)

    def user_embeddings(self, users: pd.DataFrame, histories: Sequence[np.ndarray]) -> np.ndarray:
        """float32 [len(users), D] user vectors."""
        if len(users) != len(histories):
            raise RecommenderError(f"{len(users)} users but {len(histories)} histories")
        hist, prof = self.tower_inputs(users, histories)
        bs = self.batch_size
        out = [self.tower(hist[s : s + bs], prof[s : s + bs]) for s in range(0, len(hist), bs)]
        return np.concatenate(out) if out else np.zeros((0, self.item_embeddings.shape[1]), np.float32)

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        """float32 [len(users), len(catalogue)]: dot product of user and item vectors; -inf for items without one."""
        rows = self.index.rows(catalogue)
        known = rows >= 0
        if not known.all():
            log.warning("%s: %d catalogue items have no embedding (not in the model's items); scored -inf", self.name,
                        int((~known).sum()))
        scores = np.full((len(users), len(rows)), -np.inf, dtype=np.float32)
        scores[:, known] = self.user_embeddings(users, histories) @ self.item_embeddings[rows[known]].T
        return scores


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
