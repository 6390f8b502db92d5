"""Approximate top-K: the HNSW inner-product index finds the exact top-K, respects exclusions, and the
chunked exact search equals a full sort."""

import json

import numpy as np
import pytest

from components import bundle_ops as ops
from components.ann import (
    ANN_FILE,
    ANN_META_FILE,
    MIN_QUERY_RECALL,
    AnnParams,
    build_item_index,
    exact_top_k,
    recall_at_k,
    write_item_index,
)


def clustered(n: int, dim: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors around cluster centres (as trained item embeddings are), float32 [n, dim]."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_chunked_exact_top_k_equals_a_full_sort():
    items, users = clustered(5_000), clustered(7, seed=1)
    rows, scores = exact_top_k(items, users, k=10, chunk_rows=333)
    full = users @ items.T
    for u in range(len(users)):
        want = np.lexsort((np.arange(len(items)), -full[u]))[:10]
        assert rows[u].tolist() == want.tolist()
        assert np.allclose(scores[u], full[u][want])


def test_hnsw_recall_against_exact_search():
    items, users = clustered(20_000), clustered(200, seed=2)
    index = build_item_index(items, AnnParams(m=32, ef_construction=80, ef_search=256))
    _, approx = index.search(users, 10)
    exact, _ = exact_top_k(items, users, 10)
    assert recall_at_k(approx, exact) >= 0.95


def test_index_ranks_by_inner_product_not_distance():
    """Vectors of different norms: the largest dot product wins, which an L2 index would get wrong."""
    items = np.array([[1.0, 0.0], [3.0, 0.3], [0.0, 1.0]], dtype=np.float32)
    user = np.array([[1.0, 0.0]], dtype=np.float32)
    _, rows = build_item_index(items).search(user, 1)
    assert rows[0, 0] == 1  # dot 3.0, although row 0 is nearer in L2


def test_serving_step_excludes_items_and_matches_exact_order(tmp_path):
    items = clustered(3_000, dim=16)
    item_ids = np.arange(100, 100 + len(items), dtype=np.int64)
    write_item_index(tmp_path, items, AnnParams(ef_search=400))
    ann = ops.load_ann(str(tmp_path / "item_index.faiss"), 400)
    index = ops.ItemIndex(item_ids)
    user = clustered(1, dim=16, seed=5)[0]
    exact_ids, exact_scores = ops.request_top_k(index, items, user, np.array([], dtype=np.int64), 20)
    excluded = exact_ids[:5]
    ids, scores = ops.ann_top_k(ann, index, items, user, excluded, 10)
    want, want_scores = ops.request_top_k(index, items, user, excluded, 10)
    assert not set(ids.tolist()) & set(excluded.tolist())
    assert ids.tolist() == want.tolist() and np.allclose(scores, want_scores)
    assert ops.load_ann(str(tmp_path / "absent.faiss"), 64) is None


def test_serving_step_with_fewer_candidates_than_k():
    items = clustered(30, dim=8)
    index = ops.ItemIndex(np.arange(1, 31, dtype=np.int64))
    ann = build_item_index(items)
    ids, _ = ops.ann_top_k(ann, index, items, items[0], np.arange(1, 26), 10)  # 25 of 30 excluded
    assert sorted(ids.tolist()) == [26, 27, 28, 29, 30]
    with pytest.raises(ops.RequestError, match="k must be at least 1"):
        ops.ann_top_k(ann, index, items, items[0], np.array([], dtype=np.int64), 0)


def test_calibrated_search_serves_every_calibration_query_above_the_minimum_recall(tmp_path):
    """Queries near the items and far from all of them (a new user's profile-only vector): with the efSearch and
    exact-search threshold the calibration chose, the serving step's lists reach its reported recall, and no
    query falls under MIN_QUERY_RECALL (those whose graph search misses are ranked exactly)."""
    items = clustered(20_000)
    rng = np.random.default_rng(7)
    far = rng.normal(size=(150, 32))
    far = (0.3 * far / np.linalg.norm(far, axis=1, keepdims=True)).astype(np.float32)
    queries = np.concatenate([clustered(150, seed=2), far])
    write_item_index(tmp_path, items, AnnParams(m=8, ef_construction=40, ef_search=64), queries=queries)
    meta = json.loads((tmp_path / ANN_META_FILE).read_text())
    chosen = meta["calibration"]["chosen"]
    assert meta["ef_search"] == chosen["ef_search"] and meta["exact_below"] == chosen["exact_below"]
    assert [t["ef_search"] for t in meta["calibration"]["tried"]] == [32, 64]
    assert min(t["index_recall@10"] for t in meta["calibration"]["tried"]) < MIN_QUERY_RECALL  # the graph misses
    ann = ops.load_ann(str(tmp_path / ANN_FILE), meta["ef_search"])
    index = ops.ItemIndex(np.arange(len(items), dtype=np.int64))
    none = np.array([], dtype=np.int64)
    served = [ops.ann_top_k(ann, index, items, q, none, 10, meta["exact_below"])[0] for q in queries]
    exact, _ = exact_top_k(items, queries, 10)
    per_query = [len(set(a.tolist()) & set(e.tolist())) / 10 for a, e in zip(served, exact, strict=True)]
    assert min(per_query) >= MIN_QUERY_RECALL
    assert np.mean(per_query) == pytest.approx(chosen["recall@10"]) and chosen["recall@10"] >= 0.95


def test_a_query_scoring_below_the_threshold_is_ranked_exactly():
    items = clustered(3_000, dim=16)
    index = ops.ItemIndex(np.arange(len(items), dtype=np.int64))
    ann = build_item_index(items, AnnParams(m=4, ef_construction=8, ef_search=1))  # a poor graph search
    users = clustered(40, dim=16, seed=9)
    none = np.array([], dtype=np.int64)
    exact = [ops.request_top_k(index, items, u, none, 10)[0].tolist() for u in users]
    graph = [ops.ann_top_k(ann, index, items, u, none, 10)[0].tolist() for u in users]
    assert graph != exact  # the index alone misses some
    fallback = [ops.ann_top_k(ann, index, items, u, none, 10, exact_below=np.inf)[0].tolist() for u in users]
    assert fallback == exact
