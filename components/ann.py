"""Top-K over large catalogues: an approximate (HNSW) item index built at deploy time, and exact top-K in
chunks for evaluation and as the reference an index is measured against.

The index uses the metric the model was trained with: the score is a dot product (inner product), so the
index is `METRIC_INNER_PRODUCT`; an L2 index over the same vectors would rank differently whenever their
norms differ. The Triton top-K step searches it (components.bundle_ops.ann_top_k).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.atomic import atomic_path, write_json_atomic

ANN_FILE = "item_index.faiss"
ANN_META_FILE = "item_index.json"


@dataclass(frozen=True)
class AnnParams:
    """HNSW graph degree, build-time and search-time candidate list sizes."""

    m: int = 32
    ef_construction: int = 80
    ef_search: int = 256


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


def write_item_index(folder: str | Path, embeddings: np.ndarray, params: AnnParams = AnnParams()) -> Path:
    """Build the index and write it (and its parameters) into a model version folder, atomically."""
    import faiss

    folder = Path(folder)
    index = build_item_index(embeddings, params)
    with atomic_path(folder / ANN_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    meta = {**asdict(params), "metric": "inner_product", "items": int(embeddings.shape[0])}
    write_json_atomic(folder / ANN_META_FILE, meta)
    return folder / ANN_FILE


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


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean share of each query's exact top-k that the approximate top-k found."""
    hits = [len(set(a.tolist()) & set(e.tolist())) / max(1, len(e)) for a, e in zip(approx_rows, exact_rows,
                                                                                   strict=True)]
    return float(np.mean(hits)) if hits else 0.0
