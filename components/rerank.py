"""Diversity on request: maximal marginal relevance (MMR) re-ranking over item embeddings, and list-level measures
(intra-list diversity, novelty, NDCG of a list) used by the evaluation report's diversity curve.

MMR (Carbonell & Goldstein, 1998) builds each list greedily from a pool of the best-scored candidates: the next
item maximises (1 - strength) * relevance - strength * (highest cosine similarity to the items already chosen),
relevance being the model score min-max scaled over the user's pool. Strength 0 returns the model's ranking
unchanged (the same items in the same order, by `components.bundle_ops.top_k`); strength 1 ignores relevance after
the first item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.bundle_ops import ItemIndex, item_index, top_k
from components.errors import RecsysError

POOL_FACTOR = 5  # candidates per list slot the re-ranker chooses from
MIN_POOL = 50


class RerankError(RecsysError, ValueError):
    """Re-ranking inputs do not fit together; the message names the field."""


def check_strength(strength: float, field: str = "diversity") -> float:
    """A diversity strength in [0, 1]; anything else raises naming `field`."""
    value = float(strength)
    if not 0.0 <= value <= 1.0:
        raise RerankError(f"{field} must be between 0 and 1, got {strength!r}")
    return value


def pool_size(k: int, n_items: int) -> int:
    """How many of the best-scored candidates MMR chooses a list of `k` from."""
    return min(n_items, max(MIN_POOL, POOL_FACTOR * int(k)))


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def mmr_order(scores: np.ndarray, vectors: np.ndarray, k: int, strength: float) -> np.ndarray:
    """Positions (into `scores`, best first) of the MMR list of `k` among one user's pool.

    `scores` [N] (finite entries only are eligible; the pool as `top_k` returns it, best first), `vectors` [N, D].
    """
    strength = check_strength(strength)
    scores = np.asarray(scores, dtype=np.float64)
    eligible = np.flatnonzero(np.isfinite(scores))
    k = min(int(k), len(eligible))
    if strength == 0.0 or k == 0:
        return eligible[np.argsort(-scores[eligible], kind="stable")][:k]
    s = scores[eligible]
    span = s.max() - s.min()
    relevance = (s - s.min()) / span if span > 0 else np.ones_like(s)
    unit = unit_rows(np.asarray(vectors)[eligible]).astype(np.float64)
    max_sim = np.zeros(len(eligible))
    chosen = np.zeros(len(eligible), dtype=bool)
    picks = []
    for _ in range(k):
        value = (1.0 - strength) * relevance - strength * max_sim
        value[chosen] = -np.inf
        best = int(np.argmax(value))  # ties: the better-scored (earlier) candidate
        picks.append(best)
        chosen[best] = True
        max_sim = np.maximum(max_sim, unit @ unit[best])
    return eligible[np.asarray(picks, dtype=np.int64)]


def diversify(
    scores: np.ndarray,
    k: int,
    exclude: Sequence[np.ndarray] | None,
    catalogue: ItemIndex | np.ndarray,
    item_vectors: np.ndarray,
    strength: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` lists per row of `scores` [U, N] re-ranked by MMR with `strength` (0: exactly `top_k`'s lists).

    `item_vectors` [N, D] are the catalogue rows' embeddings. Returns (item ids [U, k], model scores [U, k]) like
    `top_k`, -1 / -inf padding where fewer candidates are left.
    """
    strength = check_strength(strength)
    index = item_index(catalogue)
    if strength == 0.0:
        return top_k(scores, k, exclude, index)
    item_vectors = np.asarray(item_vectors, dtype=np.float32)
    if item_vectors.ndim != 2 or len(item_vectors) != len(index):
        raise RerankError(f"item_vectors shape {item_vectors.shape} does not match a catalogue of {len(index)} items")
    pool_ids, pool_scores = top_k(scores, pool_size(k, len(index)), exclude, index)
    width = min(int(k), pool_ids.shape[1])
    ids = np.full((len(pool_ids), width), -1, dtype=np.int64)
    out = np.full((len(pool_ids), width), -np.inf, dtype=np.float32)
    for u in range(len(pool_ids)):
        rows = index.rows(pool_ids[u])  # -1 for padding
        order = mmr_order(np.where(rows >= 0, pool_scores[u], -np.inf), item_vectors[np.maximum(rows, 0)], width,
                          strength)
        ids[u, : len(order)] = pool_ids[u][order]
        out[u, : len(order)] = pool_scores[u][order]
    return ids, out


# ----------------------------------------------------------------------------------------------- list measures


def intra_list_diversity(ids: np.ndarray, catalogue: ItemIndex | np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Per list: mean pairwise cosine distance (1 - cosine) of its items' embeddings (padding -1 ignored)."""
    index = item_index(catalogue)
    unit = unit_rows(item_vectors)
    out = np.zeros(len(ids))
    for u, row in enumerate(np.asarray(ids)):
        rows = index.rows(row[row >= 0])
        rows = rows[rows >= 0]
        if len(rows) < 2:
            continue
        v = unit[rows].astype(np.float64)
        sim = v @ v.T
        n = len(rows)
        out[u] = 1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1))
    return out


def novelty(ids: np.ndarray, item_ids: np.ndarray, item_users: np.ndarray, n_users: int) -> np.ndarray:
    """Per list: mean self-information -log2 p(i) of its items, p(i) = (users who consumed i + 1) / (users + 1)."""
    index = ItemIndex(np.asarray(item_ids, dtype=np.int64))
    counts = np.asarray(item_users, dtype=np.float64)
    info = -np.log2((counts + 1.0) / (float(n_users) + 1.0))
    out = np.zeros(len(ids))
    for u, row in enumerate(np.asarray(ids)):
        rows = index.rows(row[row >= 0])
        known = rows >= 0
        out[u] = info[rows[known]].mean() if known.any() else 0.0
    return out


def list_ndcg(ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per list: NDCG of the one target item in it (1 / log2(position + 1); 0 when the list misses it)."""
    ids = np.asarray(ids)
    hit = ids == np.asarray(targets)[:, None]
    position = np.argmax(hit, axis=1) + 1
    return np.where(hit.any(axis=1), 1.0 / np.log2(position + 1.0), 0.0)
