"""Top-K over large catalogues: an approximate (HNSW) item index built at deploy time, and exact top-K in
chunks for evaluation and as the reference an index is measured against.

The index uses the metric the model was trained with: the score is a dot product (inner product), so the
index is `METRIC_INNER_PRODUCT`; an L2 index over the same vectors would rank differently whenever their
norms differ. The Triton top-K step searches it (components.bundle_ops.ann_top_k).

Deploy calibrates the search on the model's own user vectors (`tower_queries`: users with histories and
profile-only users): a greedy graph search fails on queries far from every item (a new user known by profile
alone: recall 0.4 at efSearch 256 on a 10^5-item model whose history queries reach 0.95), and such queries
show it by a low best score. `calibrate_search` picks the efSearch and a score below which a query is ranked
exactly, the cheapest pair (measured time) whose recall meets the target.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from components.atomic import atomic_path, write_json_atomic

ANN_FILE = "item_index.faiss"
ANN_META_FILE = "item_index.json"
MIN_QUERY_RECALL = 0.8  # a calibration query whose recall@10 is below this must fall back to exact search


@dataclass(frozen=True)
class AnnParams:
    """HNSW graph degree, build-time and search-time candidate list sizes."""

    m: int = 32
    ef_construction: int = 80
    ef_search: int = 256
    exact_below: float | None = None  # a query whose best candidate scores below this is ranked exactly


def build_item_index(embeddings: np.ndarray, params: AnnParams = AnnParams(), threads: int = 1):
    """An HNSW index (inner product) over float32 [N, D] item embeddings; row r of the table is id r."""
    import faiss

    faiss.omp_set_num_threads(threads)
    table = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexHNSWFlat(table.shape[1], params.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    index.add(table)
    index.hnsw.efSearch = params.ef_search
    return index


def write_item_index(folder: str | Path, embeddings: np.ndarray, params: AnnParams = AnnParams(),
                     queries: np.ndarray | None = None, target_recall: float = 0.95) -> Path:
    """Build the index and write it (and its parameters) into a model version folder, atomically; with
    `queries`, efSearch (up to params.ef_search) and the exact-search threshold come from `calibrate_search`."""
    import faiss

    folder = Path(folder)
    index = build_item_index(embeddings, params)
    calibration: dict[str, Any] | None = None
    if queries is not None and len(queries):
        params, calibration = calibrate_search(index, embeddings, queries, target_recall, params)
        index.hnsw.efSearch = params.ef_search
    with atomic_path(folder / ANN_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    meta = {**asdict(params), "metric": "inner_product", "items": int(embeddings.shape[0]),
            "calibration": calibration}
    write_json_atomic(folder / ANN_META_FILE, meta)
    return folder / ANN_FILE


def calibrate_search(index, embeddings: np.ndarray, queries: np.ndarray, target_recall: float = 0.95,
                     params: AnnParams = AnnParams(), k: int = 10) -> tuple[AnnParams, dict[str, Any]]:
    """Measure recall@k and time of efSearch 32, 64, ... params.ef_search on `queries` against exact search;
    for each, the exact-search threshold is just above the best score of every query whose recall is below
    MIN_QUERY_RECALL (those are ranked exactly). Returns the cheapest (search + fallback share x exact time)
    setting whose mean recall reaches `target_recall` (else the most accurate), and what was measured."""
    table = np.ascontiguousarray(embeddings, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    exact_rows, _ = exact_top_k(table, queries, k)
    probe = queries[: min(20, len(queries))]
    start = time.perf_counter()
    for q in probe:
        exact_top_k(table, q[None], k)
    exact_ms = (time.perf_counter() - start) * 1000 / len(probe)
    tried = []
    ladder = sorted({*(2 ** p for p in range(5, 15) if 2 ** p < params.ef_search), params.ef_search})
    for ef in ladder:
        index.hnsw.efSearch = ef
        start = time.perf_counter()
        _, rows = index.search(queries, k)
        ann_ms = (time.perf_counter() - start) * 1000 / len(queries)
        valid = rows >= 0
        best = np.where(valid, np.einsum("qkd,qd->qk", table[np.where(valid, rows, 0)], queries), -np.inf).max(1)
        recall = per_query_recall(rows, exact_rows)
        failing = recall < MIN_QUERY_RECALL
        threshold = float(np.nextafter(best[failing].max(), np.float32(np.inf))) if failing.any() else None
        exact = best < threshold if threshold is not None else np.zeros(len(queries), dtype=bool)
        served = np.where(exact, 1.0, recall)
        tried.append({"ef_search": ef, "exact_below": threshold, "recall@10": float(served.mean()),
                      "index_recall@10": float(recall.mean()), "exact_share": float(exact.mean()),
                      "ms_per_query": ann_ms + float(exact.mean()) * exact_ms})
    meeting = [t for t in tried if t["recall@10"] >= target_recall]
    chosen = (min(meeting, key=lambda t: t["ms_per_query"]) if meeting else max(tried, key=lambda t: t["recall@10"]))
    report = {"queries": int(len(queries)), "target_recall@10": target_recall, "exact_ms_per_query": exact_ms,
              "chosen": chosen, "tried": tried}
    return replace(params, ef_search=chosen["ef_search"], exact_below=chosen["exact_below"]), report


def tower_queries(bundle_dir: str | Path, with_history: int = 300, profile_only: int = 200, seed: int = 0
                  ) -> np.ndarray:
    """User vectors of a serving bundle's own user tower: `with_history` users with random histories (1 to
    max_seq_len catalogue items, random profiles) and up to `profile_only` users known by profile alone (every
    profile combination when there are no more), float32 [N, D]."""
    import itertools

    from components.bundle_ops import profile_sizes
    from components.ensemble import onnx_session

    bundle = Path(bundle_dir)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    n_items, length = int(np.load(bundle / "item_ids.npy", mmap_mode="r").shape[0]), int(manifest["max_seq_len"])
    sizes = profile_sizes(manifest)
    rng = np.random.default_rng(seed)
    history = np.zeros((with_history, length), dtype=np.int64)
    for row, n in enumerate(rng.integers(1, length + 1, with_history)):
        history[row, length - n:] = rng.integers(0, n_items, n) + 1  # catalogue row + 1, left-padded with 0
    profiles = rng.integers(0, np.asarray(sizes), size=(with_history, len(sizes)))
    combos = int(np.prod(sizes)) if sizes else 1
    if combos <= profile_only:
        alone = np.array(list(itertools.product(*(range(s) for s in sizes))), dtype=np.int64).reshape(combos, -1)
    else:
        alone = rng.integers(0, np.asarray(sizes), size=(profile_only, len(sizes)))
    history = np.concatenate([history, np.zeros((len(alone), length), dtype=np.int64)])
    profiles = np.concatenate([profiles, alone]).astype(np.int64)
    session = onnx_session(bundle / "user_tower.onnx")
    parts = [session.run(["user_embedding"], {"history": history[i:i + 256], "profile": profiles[i:i + 256]})[0]
             for i in range(0, len(history), 256)]
    return np.concatenate(parts).astype(np.float32)


def exact_top_k(embeddings: np.ndarray, users: np.ndarray, k: int, chunk_rows: int = 65_536
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact best-first (rows int64 [B, k], scores float32 [B, k]) by dot product, scoring the catalogue in
    chunks of `chunk_rows` items so memory stays B x chunk, whatever the catalogue size."""
    users = np.atleast_2d(np.asarray(users, dtype=np.float32))
    k = min(int(k), embeddings.shape[0])
    best_scores = np.full((users.shape[0], 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((users.shape[0], 0), dtype=np.int64)
    for start in range(0, embeddings.shape[0], chunk_rows):
        block = np.asarray(embeddings[start:start + chunk_rows], dtype=np.float32)
        scores = users @ block.T
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, 1)], axis=1)
        best_rows = np.concatenate([best_rows, part + start], axis=1)
        if best_scores.shape[1] > k:
            keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, keep, 1)
            best_rows = np.take_along_axis(best_rows, keep, 1)
    order = np.lexsort((best_rows, -best_scores), axis=1)  # best first, ties by row
    return np.take_along_axis(best_rows, order, 1), np.take_along_axis(best_scores, order, 1)


def per_query_recall(approx_rows: np.ndarray, exact_rows: np.ndarray) -> np.ndarray:
    """Share of each query's exact top-k that the approximate top-k found (-1 padding never counts)."""
    return np.array([len(set(a[a >= 0].tolist()) & set(e.tolist())) / max(1, len(e))
                     for a, e in zip(approx_rows, exact_rows, strict=True)], dtype=np.float64)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean share of each query's exact top-k that the approximate top-k found."""
    hits = per_query_recall(approx_rows, exact_rows)
    return float(hits.mean()) if hits.size else 0.0
