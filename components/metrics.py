"""Ranking metrics from the rank of each user's target item, bootstrap intervals, and user groups.

Ranks are 1-based over the candidate items (the catalogue minus the user's seen items; the target always stays a
candidate). Ties are resolved in expectation: with h candidates scored higher and e others scored equal, the
target's position is uniform on [h + 1, h + e + 1], and each metric is its exact mean over that range, so a
constant scorer gets exactly the metric of a random ranking. For an exact rank r: HR@K = [r <= K],
NDCG@K = [r <= K] / log2(r + 1) (one relevant item, so the ideal DCG is 1), MRR = 1 / r over the full ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.bundle_ops import ItemIndex, exclusion_mask, top_k
from components.dataset import UNKNOWN_GROUP, group_order
from components.errors import RecsysError
from components.recommender import Recommender, check_scores

MAX_SCORE_CELLS = 1 << 24  # users x items scored at once while ranking (128 MiB of float64 scores)


class MetricsError(RecsysError, ValueError):
    """Metric inputs do not fit together; the message says how."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a bootstrap interval (low, high)."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def target_ranks(
    scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray] | None, catalogue: np.ndarray
) -> np.ndarray:
    """[U, 2] best and worst 1-based rank of each user's target among the candidates (they differ when scores tie);
    inf where the target is not in the catalogue."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.shape != (len(targets), len(catalogue)):
        raise MetricsError(f"scores shape {scores.shape} != ({len(targets)} users, {len(catalogue)} items)")
    index = ItemIndex(catalogue)
    pos = index.rows(targets)
    rows = np.arange(len(targets))
    target_score = scores[rows, np.maximum(pos, 0)]
    candidate = np.ones_like(scores, dtype=bool) if exclude is None else ~exclusion_mask(index, exclude)
    candidate[rows, np.maximum(pos, 0)] |= pos >= 0  # the target is always a candidate
    higher = ((scores > target_score[:, None]) & candidate).sum(axis=1)
    equal = ((scores == target_score[:, None]) & candidate).sum(axis=1) - 1  # minus the target itself
    ranks = np.stack([1.0 + higher, 1.0 + higher + equal], axis=1)
    ranks[pos < 0] = np.inf
    return ranks


def expected_rank(ranks: np.ndarray) -> np.ndarray:
    """Mean position: the rank itself for exact ranks [U], the midpoint for [U, 2] ranges."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return ranks if ranks.ndim == 1 else ranks.mean(axis=1)


class FixedScores:
    """Precomputed scores [users, catalogue] served through the Recommender protocol (rows by the users' `_row`):
    one scoring ranked under several settings (the priors' grids, the served mix's offsets)."""

    name = "fixed"

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        return self.scores[users["_row"].to_numpy()]


def rank_targets(
    recommender: Recommender,
    users: pd.DataFrame,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    catalogue: np.ndarray,
    k: int,
    exclude: Sequence[np.ndarray] | None = None,
    batch_size: int = 1024,
    max_cells: int = MAX_SCORE_CELLS,
) -> tuple[np.ndarray, np.ndarray]:
    """Score users in batches; return (target rank ranges [U, 2], top-k item ids [U, k]) excluding `exclude`
    (default: the histories) from the candidates. A batch holds at most `batch_size` users and `max_cells` scores
    (users x catalogue), so a large catalogue is ranked exactly in small batches (each user's result is the same)."""
    exclude = histories if exclude is None else exclude
    if not (len(users) == len(histories) == len(targets) == len(exclude)):
        raise MetricsError("users, histories, targets and exclude must have one entry per user")
    catalogue = np.asarray(catalogue, dtype=np.int64)
    index = ItemIndex(catalogue)
    batch_size = max(1, min(batch_size, max_cells // max(len(catalogue), 1)))
    ranks, tops = [], []
    for start in range(0, len(users), batch_size):
        stop = start + batch_size
        part = users.iloc[start:stop].reset_index(drop=True)
        scores = recommender.score(part, list(histories[start:stop]), catalogue)
        scores = check_scores(scores, len(part), catalogue, getattr(recommender, "name", "recommender"))
        ranks.append(target_ranks(scores, targets[start:stop], exclude[start:stop], catalogue))
        tops.append(top_k(scores, k, exclude[start:stop], index)[0])
    if not ranks:
        return np.empty((0, 2)), np.empty((0, min(k, len(catalogue))), dtype=np.int64)
    return np.concatenate(ranks), np.concatenate(tops)


def sample_users(n_users: int, max_users: int | None, seed: int) -> np.ndarray | None:
    """Sorted positions of a seeded uniform sample of `max_users` of `n_users` users; None when all are kept
    (max_users is None or not below n_users)."""
    if max_users is None or max_users >= n_users:
        return None
    if max_users < 1:
        raise MetricsError(f"evaluate.max_users must be >= 1 or null, got {max_users}")
    return np.sort(np.random.default_rng(seed).choice(n_users, size=max_users, replace=False))


def per_user_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """HR@K, NDCG@K for each K, and MRR, one value per user, from exact ranks [U] or rank ranges [U, 2]."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim == 1:
        ranks = np.stack([ranks, ranks], axis=1)
    if ranks.ndim != 2 or ranks.shape[1] != 2:
        raise MetricsError(f"ranks must be [U] or [U, 2], got shape {ranks.shape}")
    found = np.isfinite(ranks).all(axis=1)
    lo = np.where(found, ranks[:, 0], 1).astype(np.int64)
    hi = np.where(found, ranks[:, 1], 1).astype(np.int64)
    if (lo < 1).any() or (hi < lo).any():
        raise MetricsError("ranks must satisfy 1 <= best <= worst")
    width = (hi - lo + 1).astype(np.float64)
    top = int(max(hi.max(initial=1), max(ks, default=1)))
    positions = np.arange(1, top + 1, dtype=np.float64)
    dcg = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(positions + 1.0))])  # dcg[p] = sum_{q<=p} 1/log2(q+1)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / positions)])
    out: dict[str, np.ndarray] = {}
    for k in ks:
        upper = np.minimum(hi, k)
        inside = upper >= lo
        hits = np.where(inside, upper - lo + 1, 0)
        gains = np.where(inside, dcg[np.maximum(upper, 0)] - dcg[lo - 1], 0.0)
        out[f"hr@{k}"] = np.where(found, hits / width, 0.0)
        out[f"ndcg@{k}"] = np.where(found, gains / width, 0.0)
    out["mrr"] = np.where(found, (harmonic[hi] - harmonic[lo - 1]) / width, 0.0)
    return out


def coverage(top_item_ids: np.ndarray, catalogue: np.ndarray) -> float:
    """Share of the catalogue that appears in at least one user's top-K list (padding -1 ignored)."""
    if len(catalogue) == 0:
        return 0.0
    shown = np.unique(np.asarray(top_item_ids).ravel())
    return float(np.isin(np.asarray(catalogue), shown).sum() / len(catalogue))


def bootstrap(
    per_user: dict[str, np.ndarray], samples: int, seed: int, alpha: float = 0.05, clusters: np.ndarray | None = None
) -> dict[str, Estimate]:
    """Mean of each per-user metric with a percentile bootstrap interval over users (same resamples for all); with
    `samples` = 0 the mean alone (interval NaN). With `clusters` (a label per row: the user of each of several
    targets) whole clusters are resampled and each resample's mean is over its rows; one row per cluster is the
    plain bootstrap, draw for draw."""
    if not per_user:
        return {}
    n = len(next(iter(per_user.values())))
    if any(len(v) != n for v in per_user.values()):
        raise MetricsError("per-user metric arrays differ in length")
    if clusters is not None and len(clusters) != n:
        raise MetricsError(f"clusters label {len(clusters)} rows, the metrics have {n}")
    if n == 0:
        return {name: Estimate(float("nan"), float("nan"), float("nan")) for name in per_user}
    if samples == 0:
        return {name: Estimate(float(np.asarray(v, dtype=np.float64).mean()), float("nan"), float("nan"))
                for name, v in per_user.items()}
    rng = np.random.default_rng(seed)
    codes = np.arange(n) if clusters is None else pd.factorize(np.asarray(clusters))[0]
    n_clusters = int(codes.max()) + 1
    idx = rng.integers(0, n_clusters, size=(samples, n_clusters))
    rows_drawn = np.bincount(codes, minlength=n_clusters)[idx].sum(axis=1)
    out = {}
    for name, values in per_user.items():
        values = np.asarray(values, dtype=np.float64)
        means = np.bincount(codes, values, minlength=n_clusters)[idx].sum(axis=1) / rows_drawn
        low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
        point = float(values.mean())
        out[name] = Estimate(point, min(float(low), point), max(float(high), point))
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, samples: int, seed: int, alpha: float = 0.05,
                      clusters: np.ndarray | None = None) -> Estimate:
    """Mean of a - b over the same users with a paired bootstrap interval (over `clusters` when given)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise MetricsError(f"paired metrics need the same users: {a.shape} vs {b.shape}")
    return bootstrap({"diff": a - b}, samples, seed, alpha, clusters)["diff"]


def group_breakdown(
    per_user: dict[str, np.ndarray], groups: dict[str, np.ndarray], samples: int, seed: int
) -> pd.DataFrame:
    """Metrics per user group: rows (attribute, group, users, metric, value, low, high)."""
    rows = []
    for attribute, labels in groups.items():
        labels = pd.Series(labels).fillna(UNKNOWN_GROUP).astype(str).to_numpy()
        for group in sorted(set(labels), key=group_order):
            members = labels == group
            sub = {name: np.asarray(v)[members] for name, v in per_user.items()}
            for name, est in bootstrap(sub, samples, seed).items():
                rows.append((attribute, group, int(members.sum()), name, est.value, est.low, est.high))
    return pd.DataFrame(rows, columns=["attribute", "group", "users", "metric", "value", "low", "high"])


def group_ratio(breakdown: pd.DataFrame, attribute: str, metric: str) -> float:
    """Worst / best group value of `metric` over the groups of `attribute` (1 = parity; nan if undefined)."""
    values = breakdown[(breakdown["attribute"] == attribute) & (breakdown["metric"] == metric)]["value"]
    values = values[values.notna()]
    if values.empty or values.max() <= 0:
        return float("nan")
    return float(values.min() / values.max())


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 = equal exposure, -> 1 = all on one item)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    return float(2.0 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1.0) / n)


def head_items(reference: pd.DataFrame, catalogue: np.ndarray, head_fraction: float) -> np.ndarray:
    """The ceil(head_fraction * |catalogue|) most consumed catalogue items in the reference (ties: lower id)."""
    counts = reference["item_id"].value_counts().reindex(catalogue, fill_value=0)
    order = pd.DataFrame({"item_id": catalogue, "n": counts.to_numpy()}).sort_values(
        ["n", "item_id"], ascending=[False, True], kind="stable")
    n_head = int(np.ceil(head_fraction * len(catalogue)))
    return order["item_id"].to_numpy()[:n_head]
