"""Strong non-neural baselines (contract C3), fitted on `split.train` with implicit (binary) feedback.

- most-popular: number of training interactions of each item.
- item-kNN: cosine similarity between item columns of the user-item matrix, each item keeping its `neighbours`
  most similar items; a user's score for item j is the summed similarity of j to the user's history items.
- EASE (Steck, 2019): B = I - P / diag(P) with P = (X^T X + lambda I)^-1 and diag(B) = 0; score = x_u B.

Items that were not in the training data cannot be scored by these models; they get UNSEEN_SCORE (below every
real score). Neighbourhood size and lambda are tuned on the validation split (`fit_baselines`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.errors import RecsysError
from components.metrics import per_user_metrics, rank_targets
from components.recommender import Recommender, catalogue_positions
from components.splits import Split, histories

log = logging.getLogger(__name__)
UNSEEN_SCORE = np.float32(-1e30)
TUNE_METRIC = "ndcg@10"


class BaselineError(RecsysError, ValueError):
    """A baseline cannot be fitted or used as asked."""


class _ItemIndex:
    """Training items and the history -> sparse row mapping every baseline shares."""

    name = "baseline"

    def _index(self, train: pd.DataFrame) -> sp.csr_matrix:
        if train.empty:
            raise BaselineError(f"{self.name}: no training interactions")
        self.item_ids = np.unique(train["item_id"].to_numpy(dtype=np.int64))
        users, rows = np.unique(train["user_id"].to_numpy(dtype=np.int64), return_inverse=True)
        cols = catalogue_positions(self.item_ids, train["item_id"].to_numpy(dtype=np.int64))
        x = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(len(users), len(self.item_ids)))
        x.data[:] = 1.0  # repeated interactions count once
        return x

    def _history_matrix(self, hist: Sequence[np.ndarray]) -> sp.csr_matrix:
        lengths = [len(h) for h in hist]
        cols = catalogue_positions(self.item_ids, np.concatenate([np.asarray(h, dtype=np.int64) for h in hist])
                                   if sum(lengths) else np.empty(0, dtype=np.int64))
        rows = np.repeat(np.arange(len(hist)), lengths)
        keep = cols >= 0
        x = sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(len(hist), len(self.item_ids)))
        x.data[:] = 1.0
        return x

    def _to_catalogue(self, item_scores: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
        """[U, n_train_items] -> [U, len(catalogue)] float32, UNSEEN_SCORE for items not seen in training."""
        pos = catalogue_positions(self.item_ids, np.asarray(catalogue, dtype=np.int64))
        out = np.full((item_scores.shape[0], len(catalogue)), UNSEEN_SCORE, dtype=np.float32)
        known = pos >= 0
        out[:, known] = item_scores[:, pos[known]]
        return out


class MostPopular(_ItemIndex):
    """Ranks items by their number of training interactions (the same list for everyone)."""

    name = "most-popular"

    def fit(self, train: pd.DataFrame) -> MostPopular:
        self.counts = np.asarray(self._index(train).sum(axis=0), dtype=np.float32).ravel()
        self.params: dict[str, float] = {}
        return self

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        return self._to_catalogue(np.tile(self.counts, (len(users), 1)), catalogue)


class ItemKNN(_ItemIndex):
    """Cosine item-item neighbourhood model (dense similarity: memory n_items^2)."""

    name = "item-knn"

    def __init__(self, neighbours: int = 100) -> None:
        if neighbours < 1:
            raise BaselineError(f"item-knn: neighbours must be >= 1, got {neighbours}")
        self.neighbours = neighbours

    def fit(self, train: pd.DataFrame) -> ItemKNN:
        x = self._index(train)
        co = np.asarray((x.T @ x).todense(), dtype=np.float64)
        norms = np.sqrt(np.diag(co))
        sim = co / np.maximum(np.outer(norms, norms), 1e-12)
        np.fill_diagonal(sim, 0.0)
        n = sim.shape[0]
        if self.neighbours < n:  # keep, for each target item (column), its most similar items
            cut = np.argpartition(-sim, self.neighbours - 1, axis=0)[self.neighbours :, :]
            np.put_along_axis(sim, cut, 0.0, axis=0)
        self.similarity = sim.astype(np.float32)
        self.params = {"neighbours": float(self.neighbours)}
        return self

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        return self._to_catalogue(np.asarray(self._history_matrix(histories) @ self.similarity), catalogue)


class EASE(_ItemIndex):
    """Embarrassingly shallow autoencoder: closed-form item-item weights with a zero diagonal."""

    name = "ease"

    def __init__(self, l2: float = 500.0) -> None:
        if l2 <= 0:
            raise BaselineError(f"ease: lambda must be > 0, got {l2}")
        self.l2 = l2

    def fit(self, train: pd.DataFrame) -> EASE:
        x = self._index(train)
        gram = np.asarray((x.T @ x).todense(), dtype=np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        p = np.linalg.inv(gram)
        b = p / (-np.diag(p))
        np.fill_diagonal(b, 0.0)
        self.weights = b.astype(np.float32)
        self.params = {"lambda": float(self.l2)}
        return self

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        return self._to_catalogue(np.asarray(self._history_matrix(histories) @ self.weights), catalogue)


def user_frame(user_ids: np.ndarray, users: pd.DataFrame | None) -> pd.DataFrame:
    """One row per user id (in order) with the profile columns; NaN where the user is unknown."""
    ids = pd.DataFrame({"user_id": np.asarray(user_ids, dtype=np.int64)})
    if users is None:
        return ids
    return ids.merge(users.drop_duplicates("user_id"), on="user_id", how="left")


def validation_score(
    recommender: Recommender, split: Split, users: pd.DataFrame | None, catalogue: np.ndarray,
    metric: str = TUNE_METRIC,
) -> float:
    """Mean `metric` (e.g. ndcg@10) on the validation rows, excluding each user's training items."""
    hist = histories(split, "validation")
    val = split.validation.sort_values("user_id")
    user_ids = val["user_id"].to_numpy(dtype=np.int64)
    seen = [hist.get(int(u), np.empty(0, dtype=np.int64)) for u in user_ids]
    k = int(metric.split("@")[1]) if "@" in metric else 10
    ranks, _ = rank_targets(recommender, user_frame(user_ids, users), seen, val["item_id"].to_numpy(), catalogue, k)
    values = per_user_metrics(ranks, [k])
    if metric not in values:
        raise BaselineError(f"unknown tuning metric {metric!r}; use hr@K, ndcg@K or mrr")
    return float(values[metric].mean())


def fit_baselines(
    split: Split,
    users: pd.DataFrame | None,
    catalogue: np.ndarray,
    knn_neighbours: Sequence[int] = (20, 50, 100, 200),
    ease_lambdas: Sequence[float] = (100.0, 250.0, 500.0, 1000.0),
    metric: str = TUNE_METRIC,
) -> dict[str, Recommender]:
    """Most-popular, item-kNN and EASE fitted on `split.train`, kNN size and EASE lambda picked on validation.

    Each fitted model gets `.tuning` (list of (param, validation metric)) and `.params` (the chosen one).
    """
    pop = MostPopular().fit(split.train)
    pop.tuning = []
    out: dict[str, Recommender] = {pop.name: pop}
    for name, make, grid in (("item-knn", ItemKNN, knn_neighbours), ("ease", EASE, ease_lambdas)):
        best, best_value, tuning = None, -np.inf, []
        for value in grid:
            model = make(value).fit(split.train)
            score = validation_score(model, split, users, catalogue, metric) if len(split.validation) else 0.0
            tuning.append((float(value), score))
            log.info("%s %s=%s: validation %s %.4f", name, "k" if make is ItemKNN else "lambda", value, metric, score)
            if score > best_value:
                best, best_value = model, score
        best.tuning = tuning
        out[name] = best
    return out
