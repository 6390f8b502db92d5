"""Baselines on planted patterns: users consume items of one cluster; a chain whose next item follows the last."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from components.baselines import (
    ALS,
    EASE,
    ItemKNN,
    MostPopular,
    configured_baselines,
    fit_baselines,
    validation_score,
)
from components.config import ConfigError, load_config
from components.item_index import UNSEEN_SCORE, BaselineError
from components.metrics import per_user_metrics, rank_targets
from components.recommender import Recommender, top_k
from components.sasrec import SASRec
from components.splits import histories, temporal_split

SMALL_SASREC = {"max_seq_len": 10, "embedding_dim": 16, "blocks": 1, "heads": 1, "dropout": 0.1, "epochs": 30,
                "patience": 4, "batch_size": 32, "learning_rate": 0.005}


def planted(n_users: int = 120, n_clusters: int = 6, per_cluster: int = 8, seed: int = 0) -> pd.DataFrame:
    """Each user takes 6 items of one cluster, plus 2 globally popular 'blockbusters' (items 0, 1) early on.

    The next item is predictable from the cluster, not from global popularity.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        c = u % n_clusters
        items = 2 + c * per_cluster + rng.permutation(per_cluster)[:6]
        seq = [0, 1, *items.tolist()]
        for t, item in enumerate(seq):
            rows.append((u, item, u * 100 + t))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "sec"])
    return pd.DataFrame({
        "user_id": df.user_id.astype("int64"), "item_id": df.item_id.astype("int64"), "rating": np.float32(1.0),
        "event_timestamp": pd.to_datetime(df.sec, unit="s", utc=True).astype("datetime64[us, UTC]"),
    })


def _frame(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "sec"])
    return pd.DataFrame({
        "user_id": df.user_id.astype("int64"), "item_id": df.item_id.astype("int64"), "rating": np.float32(1.0),
        "event_timestamp": pd.to_datetime(df.sec, unit="s", utc=True).astype("datetime64[us, UTC]"),
    })


def chain(n_users: int = 160, n_items: int = 60, length: int = 10, seed: int = 0) -> pd.DataFrame:
    """Each user walks a fixed random cycle over the items from a random start: the next item follows from the
    last one alone (popularity is flat, and co-occurrence does not say which way the walk goes)."""
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(n_items)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        rows += [(u, int(cycle[(start + t) % n_items]), u * 100 + t) for t in range(length)]
    return _frame(rows)


def low_rank(n_users: int = 200, n_groups: int = 4, per_group: int = 15, per_user: int = 8, seed: int = 0):
    """Users like the items of one latent group (a rank-4 matrix), in random order, plus a few random items."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        g = u % n_groups
        liked = g * per_group + rng.permutation(per_group)[:per_user]
        noise = rng.integers(0, n_groups * per_group, size=1)
        seq = rng.permutation(np.concatenate([liked, noise]))
        rows += [(u, int(item), u * 100 + t) for t, item in enumerate(seq)]
    return _frame(rows).drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)


def _test_ndcg(model: Recommender, split, catalogue) -> float:
    hist = histories(split, "test")
    test = split.test.sort_values("user_id")
    seen = [hist[int(u)] for u in test.user_id]
    ranks, _ = rank_targets(model, test[["user_id"]], seen, test.item_id.to_numpy(), catalogue, 10)
    return float(per_user_metrics(ranks, [10])["ndcg@10"].mean())


@pytest.fixture(scope="module")
def split_and_catalogue():
    data = planted()
    split = temporal_split(data, cold_start_items=0, seed=0)
    return split, np.unique(data.item_id.to_numpy())


def test_ease_and_knn_beat_most_popular(split_and_catalogue) -> None:
    split, catalogue = split_and_catalogue
    pop = _test_ndcg(MostPopular().fit(split.train), split, catalogue)
    ease = _test_ndcg(EASE(10.0).fit(split.train), split, catalogue)
    knn = _test_ndcg(ItemKNN(10).fit(split.train), split, catalogue)
    assert ease > pop + 0.2
    assert knn > pop + 0.2


def test_knn_neighbours_are_cluster_mates(split_and_catalogue) -> None:
    split, _ = split_and_catalogue
    knn = ItemKNN(neighbours=5).fit(split.train)
    col = list(knn.item_ids).index(2)  # item 2 belongs to cluster 0 (items 2..9)
    top = knn.item_ids[np.argsort(-knn.similarity[:, col])[:5]]
    assert set(top.tolist()) <= set(range(2, 10)) | {0, 1}
    assert (knn.similarity[:, col] > 0).sum() <= 5 and knn.similarity[col, col] == 0


def test_scores_shape_and_unseen_items(split_and_catalogue) -> None:
    split, catalogue = split_and_catalogue
    ease = EASE(10.0).fit(split.train)
    cat = np.append(catalogue, 12345)
    scores = ease.score(pd.DataFrame({"user_id": [0, 1]}), [np.array([0, 2]), np.array([], dtype=np.int64)], cat)
    assert scores.shape == (2, len(cat)) and scores.dtype == np.float32
    assert scores[0, -1] == UNSEEN_SCORE and np.all(scores[1, :-1] == 0)
    pop = MostPopular().fit(split.train).score(pd.DataFrame({"user_id": [0]}), [np.array([0])], cat)
    assert pop[0, 0] == pop[0].max()  # item 0 is in every history


def test_fit_baselines_tunes_on_validation(split_and_catalogue) -> None:
    split, catalogue = split_and_catalogue
    models = fit_baselines(split, None, catalogue, knn_neighbours=[2, 10], ease_lambdas=[1.0, 10.0, 1e5])
    assert set(models) == {"most-popular", "item-knn", "ease"}
    ease = models["ease"]
    assert len(ease.tuning) == 3
    assert validation_score(ease, split, None, catalogue) == max(v for _, v in ease.tuning)
    with pytest.raises(BaselineError):
        EASE(0.0)
    with pytest.raises(BaselineError):
        ItemKNN(0)


@pytest.fixture(scope="module")
def chain_split():
    data = chain()
    return temporal_split(data, cold_start_items=0, seed=0), np.unique(data.item_id.to_numpy())


def _sasrec(split, catalogue, seed: int = 0) -> SASRec:
    return SASRec(**SMALL_SASREC, seed=seed).fit(split.train, validate=lambda m: validation_score(m, split, None,
                                                                                                   catalogue))


def test_sasrec_learns_the_next_item(chain_split) -> None:
    split, catalogue = chain_split
    pop = _test_ndcg(MostPopular().fit(split.train), split, catalogue)
    model = _sasrec(split, catalogue)
    assert _test_ndcg(model, split, catalogue) > pop + 0.5
    assert 1 <= model.params["best_epoch"] <= len(model.tuning) <= SMALL_SASREC["epochs"]
    assert model.tuning[int(model.params["best_epoch"]) - 1][1] == max(v for _, v in model.tuning)


def test_sasrec_is_deterministic_and_scores_like_the_others(chain_split) -> None:
    split, catalogue = chain_split
    first, second = _sasrec(split, catalogue), _sasrec(split, catalogue)
    users = pd.DataFrame({"user_id": [0, 1, 2]})
    hist = [split.train.item_id[:5].to_numpy(), np.array([], dtype=np.int64), np.array([99999])]
    cat = np.append(catalogue, 12345)
    scores = first.score(users, hist, cat)
    assert np.array_equal(scores, second.score(users, hist, cat))
    assert scores.shape == (3, len(cat)) and scores.dtype == np.float32
    assert scores[0, -1] == UNSEEN_SCORE and np.all(scores[1:, :-1] == 0)  # no known history: no preference
    ids, _ = top_k(scores, 10, hist, cat)
    assert not np.isin(ids[0], hist[0]).any()  # seen items are left out by the shared top-K step
    with pytest.raises(BaselineError):
        SASRec(embedding_dim=10, heads=3)


def test_als_beats_most_popular_on_low_rank_data() -> None:
    data = low_rank()
    split = temporal_split(data, cold_start_items=0, seed=0)
    catalogue = np.unique(data.item_id.to_numpy())
    pop = _test_ndcg(MostPopular().fit(split.train), split, catalogue)
    als = ALS(factors=8, regularization=0.1, iterations=15).fit(split.train)
    assert _test_ndcg(als, split, catalogue) > pop + 0.15
    again = ALS(factors=8, regularization=0.1, iterations=15).fit(split.train)
    users, hist = pd.DataFrame({"user_id": [0, 1]}), [np.array([0, 1, 2]), np.array([], dtype=np.int64)]
    scores = als.score(users, hist, catalogue)
    assert np.allclose(scores, again.score(users, hist, catalogue)) and np.all(scores[1] == 0)
    with pytest.raises(BaselineError):
        ALS(factors=0)


def test_configured_baselines_register_sasrec_and_als(chain_split, tmp_path) -> None:
    split, catalogue = chain_split
    config = load_config(overrides=[
        *(f"evaluate.sasrec.{k}={v}" for k, v in SMALL_SASREC.items()), "evaluate.sasrec.epochs=3",
        "evaluate.als.factors=[4,8]", "evaluate.als.regularization=[0.1]", "evaluate.als.iterations=[5]",
        "evaluate.als.alpha=[1.0]", "evaluate.knn_neighbours=[5]", "evaluate.ease_lambdas=[10]",
    ])
    models = configured_baselines(split, None, catalogue, config)
    assert set(models) == {"most-popular", "item-knn", "ease", "als", "sasrec-ce"}
    assert len(models["als"].tuning) == 2 and models["als"].params["factors"] in (4.0, 8.0)
    assert validation_score(models["als"], split, None, catalogue) == max(v for _, v in models["als"].tuning)
    assert len(models["sasrec-ce"].tuning) <= 3
    only = configured_baselines(split, None, catalogue, config, only="ease")
    assert set(only) == {"most-popular", "item-knn", "ease"}
    off = load_config(overrides=["evaluate.sasrec.enabled=false", "evaluate.als.enabled=false",
                                 "evaluate.knn_neighbours=[5]", "evaluate.ease_lambdas=[10]"])
    assert "sasrec-ce" not in configured_baselines(split, None, catalogue, off)


@pytest.mark.parametrize("override", [
    "evaluate.sasrec.embedding_dim=10", "evaluate.sasrec.blocks=0", "evaluate.sasrec.dropout=1.0",
    "evaluate.sasrec.learning_rate=0", "evaluate.sasrec.patience=0", "evaluate.als.factors=[]",
    "evaluate.als.regularization=[-1]", "evaluate.als.alpha=[0]", "evaluate.sasrec.unknown=1",
])
def test_baseline_settings_are_validated(override: str) -> None:
    overrides = [override] if "embedding_dim" not in override else [override, "evaluate.sasrec.heads=4"]
    with pytest.raises(ConfigError):
        load_config(overrides=overrides)


@pytest.mark.parametrize("block", [4096, 7])
def test_sparse_item_knn_matches_the_dense_one(split_and_catalogue, block: int, monkeypatch) -> None:
    """The sparse similarity (co-occurring items only, in blocks of columns) keeps, for every item, the same top
    similarities as the dense one; which of two items tied at the k-th similarity is kept may differ."""
    split, catalogue = split_and_catalogue
    dense = ItemKNN(5).fit(split.train)
    sparse_fit = ItemKNN._sparse_similarity
    monkeypatch.setattr(ItemKNN, "_sparse_similarity", lambda self, x: sparse_fit(self, x, block=block))
    sparse = ItemKNN(5, dense_max_items=1).fit(split.train)
    assert sparse.similarity.nnz <= 5 * len(sparse.item_ids)
    want = np.asarray(dense.similarity)
    got = sparse.similarity.toarray()
    assert (got > 0).sum() == (want > 0).sum()
    np.testing.assert_allclose(-np.sort(-got, axis=0), -np.sort(-want, axis=0), atol=1e-6)
    full = np.asarray(ItemKNN(10**6).fit(split.train).similarity)  # every similarity, nothing cut
    for column in np.flatnonzero((np.abs(got - want) > 1e-6).any(axis=0)):
        swapped = np.flatnonzero((got[:, column] > 0) != (want[:, column] > 0))  # kept by one of them only
        kth = np.sort(want[:, column])[-5]
        np.testing.assert_allclose(full[swapped, column], kth, atol=1e-6)  # ties at the k-th similarity
    users = pd.DataFrame({"user_id": [0, 1, 2]})
    hist = [np.array([2, 3]), np.array([20, 21, 22]), np.array([], dtype=np.int64)]
    assert sparse.score(users, hist, catalogue).shape == dense.score(users, hist, catalogue).shape
    assert _test_ndcg(sparse, split, catalogue) == pytest.approx(_test_ndcg(dense, split, catalogue), abs=0.01)


def test_ease_is_skipped_above_its_item_budget(split_and_catalogue, caplog) -> None:
    split, catalogue = split_and_catalogue
    n_items = split.train["item_id"].nunique()
    with caplog.at_level("WARNING", logger="components.baselines"):
        models = fit_baselines(split, None, catalogue, knn_neighbours=[10], ease_lambdas=[10.0],
                               ease_max_items=n_items - 1)
    assert set(models) == {"most-popular", "item-knn"}
    assert "ease skipped" in caplog.text and "ease_max_items" in caplog.text
    assert sp.issparse(models["item-knn"].similarity)  # item-kNN turns sparse at the same size
    models = fit_baselines(split, None, catalogue, knn_neighbours=[10], ease_lambdas=[10.0], ease_max_items=n_items)
    assert "ease" in models


def test_validation_on_a_user_sample(split_and_catalogue) -> None:
    split, catalogue = split_and_catalogue
    pop = MostPopular().fit(split.train)
    n = len(split.validation)
    assert validation_score(pop, split, None, catalogue, max_users=n) == validation_score(pop, split, None, catalogue)
    assert validation_score(pop, split, None, catalogue, max_users=5, seed=1) == validation_score(
        pop, split, None, catalogue, max_users=5, seed=1)
