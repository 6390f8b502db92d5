"""What every baseline model shares: its training items and the history -> sparse row mapping, the score of
items it never saw, and its error (components/baselines.py, components/sasrec.py)."""

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.errors import RecsysError
from components.recommender import catalogue_positions

UNSEEN_SCORE = np.float32(-1e30)  # below every real score: items a baseline never saw in training


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
