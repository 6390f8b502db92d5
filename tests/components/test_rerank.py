"""MMR re-ranking: strength 0 is the model's ranking, diversity rises with strength, bad strengths are refused."""

import numpy as np
import pytest

from components.bundle_ops import top_k
from components.rerank import RerankError, diversify, intra_list_diversity, list_ndcg, mmr_order, novelty


def clustered(n_users: int = 40, clusters: int = 5, per_cluster: int = 20, seed: int = 0):
    """Items in tight embedding clusters; each user's scores favour one cluster (a list of near-duplicates)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, 16))
    vectors = np.repeat(centres, per_cluster, axis=0) + 0.05 * rng.normal(size=(clusters * per_cluster, 16))
    catalogue = np.arange(100, 100 + clusters * per_cluster, dtype=np.int64)
    favourite = rng.integers(0, clusters, n_users)
    scores = rng.normal(size=(n_users, len(catalogue))) * 0.1
    scores += np.repeat(np.eye(clusters)[favourite], per_cluster, axis=1)
    history = [rng.choice(catalogue, 3, replace=False) for _ in range(n_users)]
    return scores.astype(np.float32), catalogue, vectors.astype(np.float32), history


def test_strength_zero_is_the_models_ranking():
    scores, catalogue, vectors, history = clustered()
    ids, values = diversify(scores, 10, history, catalogue, vectors, 0.0)
    expected_ids, expected_values = top_k(scores, 10, history, catalogue)
    assert np.array_equal(ids, expected_ids) and np.array_equal(values, expected_values)


def test_diversity_rises_monotonically_with_strength():
    scores, catalogue, vectors, history = clustered()
    strengths = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]
    ild = [intra_list_diversity(diversify(scores, 10, history, catalogue, vectors, s)[0], catalogue, vectors).mean()
           for s in strengths]
    assert all(b >= a - 1e-9 for a, b in zip(ild, ild[1:], strict=False)), ild
    assert ild[-1] > ild[0] + 0.3  # from one cluster to several


def test_lists_keep_exclusions_and_model_scores():
    scores, catalogue, vectors, history = clustered()
    ids, values = diversify(scores, 10, history, catalogue, vectors, 0.7)
    col = {int(c): i for i, c in enumerate(catalogue)}
    for u in range(len(ids)):
        assert not set(ids[u]) & set(history[u].tolist())
        assert len(set(ids[u])) == 10
        assert np.allclose(values[u], scores[u, [col[int(i)] for i in ids[u]]])


def test_mmr_first_pick_is_the_best_item_and_padding_is_skipped():
    scores = np.array([0.1, 0.9, -np.inf, 0.5])
    vectors = np.eye(4)
    order = mmr_order(scores, vectors, 4, 0.5)
    assert order[0] == 1 and 2 not in order and len(order) == 3


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_bad_strength_names_the_field(strength):
    with pytest.raises(RerankError, match="diversity"):
        mmr_order(np.zeros(3), np.eye(3), 2, strength)


def test_list_measures():
    ids = np.array([[1, 2, 3], [4, 5, -1]])
    assert list_ndcg(ids, np.array([2, 9])).tolist() == pytest.approx([1 / np.log2(3), 0.0])
    info = novelty(ids, np.array([1, 2, 3, 4, 5]), np.array([9, 9, 9, 0, 0]), 9)
    assert info[1] > info[0]  # items nobody consumed are the more novel
    vectors = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=np.float32)
    ild = intra_list_diversity(ids, np.array([1, 2, 3, 4, 5]), vectors)
    assert ild.tolist() == pytest.approx([2 / 3, 1.0])
