"""Strong non-neural baselines (contract C3), fitted on `split.train` with implicit (binary) feedback.

- most-popular: number of training interactions of each item.
- item-kNN: cosine similarity between item columns of the user-item matrix, each item keeping its `neighbours`
  most similar items; a user's score for item j is the summed similarity of j to the user's history items.
- EASE (Steck, 2019): B = I - P / diag(P) with P = (X^T X + lambda I)^-1 and diag(B) = 0; score = x_u B. Only up to
  `evaluate.ease_max_items` training items (memory ~ 3 x 8 x n_items^2 bytes); above, item-kNN (sparse) and ALS.
- ALS (Hu, Koren & Volinsky, 2008) from `implicit`, one thread: item factors learned on the training matrix, a
  user's factors solved from their history at scoring time (so validation and test rows count); score = x_u . y_i.
- SASRec with full-softmax cross-entropy (components/sasrec.py), early-stopped on validation.

Items that were not in the training data cannot be scored by these models; they get UNSEEN_SCORE (below every
real score). Neighbourhood size, lambda and the ALS grid are tuned on the validation split, SASRec's epochs
stopped early on it (`fit_baselines`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import product
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.item_index import BaselineError, _ItemIndex
from components.metrics import per_user_metrics, rank_targets, sample_users
from components.recommender import Recommender
from components.splits import Split, histories

if TYPE_CHECKING:
    from components.config import ALSSettings, Config, SASRecSettings

log = logging.getLogger(__name__)
TUNE_METRIC = "ndcg@10"


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
    """Cosine item-item neighbourhood model: a dense similarity (memory n_items^2) up to `dense_max_items` training
    items, above that a sparse one built a block of items at a time (memory n_items x neighbours)."""

    name = "item-knn"

    def __init__(self, neighbours: int = 100, dense_max_items: int = 20_000) -> None:
        if neighbours < 1:
            raise BaselineError(f"item-knn: neighbours must be >= 1, got {neighbours}")
        self.neighbours, self.dense_max_items = neighbours, dense_max_items

    def fit(self, train: pd.DataFrame) -> ItemKNN:
        x = self._index(train)
        if x.shape[1] > self.dense_max_items:
            self.similarity = self._sparse_similarity(x)
            self.params = {"neighbours": float(self.neighbours)}
            return self
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

    def _sparse_similarity(self, x: sp.csr_matrix, block: int = 4096) -> sp.csc_matrix:
        """Each item's (column's) `neighbours` most cosine-similar items among those it co-occurs with (every other
        item's similarity is 0), `block` columns at a time: work and memory follow the co-occurrences, not items^2
        (a dense block of similarities over 10^6 items took longer than the evaluation's time limit)."""
        xc = x.tocsc().astype(np.float64)
        n = x.shape[1]
        norms = np.sqrt(np.asarray(xc.multiply(xc).sum(axis=0)).ravel())
        keep = min(self.neighbours, n - 1)
        if keep < 1:
            return sp.csc_matrix((n, n), dtype=np.float32)
        xt = xc.T.tocsr()
        rows, cols, vals = [], [], []
        for start in range(0, n, block):
            co = (xt @ xc[:, start : min(start + block, n)]).tocsc()  # co-occurrence counts [n, block], sparse
            counts = np.diff(co.indptr)
            col = np.repeat(np.arange(start, start + len(counts)), counts)
            row = co.indices
            sim = co.data / np.maximum(norms[row] * norms[col], 1e-12)
            sim[row == col] = 0.0
            order = np.lexsort((-sim, col))  # by column, most similar first
            row, col, sim = row[order], col[order], sim[order]
            rank = np.arange(len(sim)) - np.repeat(co.indptr[:-1], counts)
            kept = (rank < keep) & (sim > 0)
            rows.append(row[kept])
            cols.append(col[kept])
            vals.append(sim[kept].astype(np.float32))
        return sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        scores = self._history_matrix(histories) @ self.similarity
        return self._to_catalogue(scores.toarray() if sp.issparse(scores) else np.asarray(scores), catalogue)


def ease_fits(n_items: int, max_items: int) -> bool:
    """Whether EASE's dense items x items inverse is affordable: at most `max_items` training items."""
    return n_items <= max_items


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


class ALS(_ItemIndex):
    """Implicit-feedback matrix factorisation (`implicit`'s ALS on the CPU), users folded in from their history."""

    name = "als"

    def __init__(self, factors: int = 64, regularization: float = 1.0, iterations: int = 15, alpha: float = 1.0,
                 seed: int = 0, num_threads: int = 1) -> None:
        if factors < 1 or iterations < 1 or regularization <= 0 or alpha <= 0 or num_threads < 1:
            raise BaselineError(f"als: need factors >= 1, iterations >= 1, regularization > 0, alpha > 0 and "
                                f"num_threads >= 1; got {factors}, {iterations}, {regularization}, {alpha}, "
                                f"{num_threads}")
        self.factors, self.regularization, self.iterations, self.alpha = factors, regularization, iterations, alpha
        self.seed, self.num_threads = seed, num_threads

    def fit(self, train: pd.DataFrame) -> ALS:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        x = self._index(train).astype(np.float32)
        self.model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization,
                                             alpha=self.alpha, iterations=self.iterations, random_state=self.seed,
                                             num_threads=self.num_threads)
        with threadpool_limits(self.num_threads):
            self.model.fit(x, show_progress=False)
        self.params = {"factors": float(self.factors), "regularization": float(self.regularization),
                       "iterations": float(self.iterations), "alpha": float(self.alpha)}
        return self

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        x = self._history_matrix(histories).astype(np.float32)
        with threadpool_limits(self.num_threads):
            factors = self.model.recalculate_user(np.arange(len(histories)), x) if len(histories) else \
                np.zeros((0, self.factors), dtype=np.float32)
        scores = np.asarray(factors, dtype=np.float32) @ np.asarray(self.model.item_factors, dtype=np.float32).T
        scores[np.asarray(x.sum(axis=1)).ravel() == 0] = 0.0  # no known history: no preference
        return self._to_catalogue(scores, catalogue)


def user_frame(user_ids: np.ndarray, users: pd.DataFrame | None) -> pd.DataFrame:
    """One row per user id (in order) with the profile columns; NaN where the user is unknown."""
    ids = pd.DataFrame({"user_id": np.asarray(user_ids, dtype=np.int64)})
    if users is None:
        return ids
    return ids.merge(users.drop_duplicates("user_id"), on="user_id", how="left")


def validation_score(
    recommender: Recommender, split: Split, users: pd.DataFrame | None, catalogue: np.ndarray,
    metric: str = TUNE_METRIC, max_users: int | None = None, seed: int = 0,
) -> float:
    """Mean `metric` (e.g. ndcg@10) on the validation rows (a seeded sample of `max_users` of them when set),
    excluding each user's training items."""
    hist = histories(split, "validation")
    val = split.validation.sort_values("user_id")
    sample = sample_users(len(val), max_users, seed)
    val = val if sample is None else val.iloc[sample]
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
    als: ALSSettings | None = None,
    sasrec: SASRecSettings | None = None,
    seed: int = 0,
    num_threads: int = 1,
    ease_max_items: int = 20_000,
    max_users: int | None = None,
) -> dict[str, Recommender]:
    """Most-popular, item-kNN and EASE fitted on `split.train`, kNN size and EASE lambda picked on validation;
    plus ALS (grid picked on validation) and SASRec (early-stopped on validation) when their settings are given
    and enabled. EASE is left out above `ease_max_items` training items (its items x items inverse), item-kNN
    turns sparse there; validation uses a seeded sample of `max_users` users when set.

    Each fitted model gets `.tuning` (list of (param, validation metric); for SASRec (epoch, metric)) and
    `.params` (the chosen ones).
    """
    pop = MostPopular().fit(split.train)
    pop.tuning = []
    out: dict[str, Recommender] = {pop.name: pop}
    n_items = int(split.train["item_id"].nunique())
    families = [("item-knn", lambda k: ItemKNN(k, dense_max_items=ease_max_items), knn_neighbours)]
    if ease_fits(n_items, ease_max_items):
        families.append(("ease", EASE, ease_lambdas))
    else:
        log.warning("ease skipped: %d training items > evaluate.ease_max_items=%d (its items x items inverse would "
                    "take %.1f GB)", n_items, ease_max_items, 3 * 8 * n_items**2 / 1e9)
    for name, make, grid in families:
        best, best_value, tuning = None, -np.inf, []
        for value in grid:
            model = make(value).fit(split.train)
            score = (validation_score(model, split, users, catalogue, metric, max_users, seed)
                     if len(split.validation) else 0.0)
            tuning.append((float(value), score))
            log.info("%s %s=%s: validation %s %.4f", name, "lambda" if make is EASE else "k", value, metric, score)
            if score > best_value:
                best, best_value = model, score
        best.tuning = tuning
        out[name] = best
    has_validation = len(split.validation) > 0
    if als is not None and als.enabled:
        out[ALS.name] = _fit_als(split, users, catalogue, als, metric, seed, num_threads, max_users)
    if sasrec is not None and sasrec.enabled:
        from components.sasrec import SASRec

        model = SASRec(sasrec.max_seq_len, sasrec.embedding_dim, sasrec.blocks, sasrec.heads, sasrec.dropout,
                       sasrec.epochs, sasrec.patience, sasrec.batch_size, sasrec.learning_rate, sasrec.max_minutes,
                       seed=seed, num_threads=num_threads)
        out[model.name] = model.fit(split.train, validate=(lambda m: validation_score(
            m, split, users, catalogue, metric, max_users, seed)) if has_validation else None)
    return out


def _fit_als(split: Split, users: pd.DataFrame | None, catalogue: np.ndarray, settings: ALSSettings, metric: str,
             seed: int, num_threads: int, max_users: int | None = None) -> ALS:
    best, best_value, tuning = None, -np.inf, []
    for factors, reg, iterations, alpha in product(settings.factors, settings.regularization, settings.iterations,
                                                   settings.alpha):
        model = ALS(factors, reg, iterations, alpha, seed=seed, num_threads=num_threads).fit(split.train)
        score = (validation_score(model, split, users, catalogue, metric, max_users, seed)
                 if len(split.validation) else 0.0)
        tuning.append((dict(model.params), score))
        log.info("als %s: validation %s %.4f", model.params, metric, score)
        if score > best_value:
            best, best_value = model, score
    best.tuning = tuning
    return best


def skipped_baselines(split: Split, config: Config) -> dict[str, str]:
    """The baselines `configured_baselines` leaves out for size on this split, with the reason."""
    n_items, limit = int(split.train["item_id"].nunique()), config.evaluate.ease_max_items
    if ease_fits(n_items, limit):
        return {}
    return {EASE.name: f"{n_items} training items > evaluate.ease_max_items={limit}: its items x items inverse "
                       f"would take ~{3 * 8 * n_items**2 / 1e9:.1f} GB; item-kNN (sparse) and ALS cover this size"}


def configured_baselines(split: Split, users: pd.DataFrame | None, catalogue: np.ndarray, config: Config,
                         metric: str = TUNE_METRIC, only: str | None = None) -> dict[str, Recommender]:
    """`fit_baselines` with the grids and settings of `config.evaluate` (seed and threads from `config.train`).

    `only` names the one baseline wanted: the costly ALS and SASRec are then fitted only when it is theirs.
    """
    e = config.evaluate
    als = e.als if only in (None, ALS.name) else None
    sasrec = e.sasrec if only in (None, "sasrec-ce") else None
    return fit_baselines(split, users, catalogue, e.knn_neighbours, e.ease_lambdas, metric, als=als,
                         sasrec=sasrec, seed=config.train.seed, num_threads=config.train.num_threads,
                         ease_max_items=e.ease_max_items, max_users=e.max_users)
