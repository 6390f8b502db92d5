"""Baselines on a planted pattern: users consume items of one cluster in a fixed order."""

import numpy as np
import pandas as pd
import pytest

from components.baselines import (
    EASE,
    UNSEEN_SCORE,
    BaselineError,
    ItemKNN,
    MostPopular,
    fit_baselines,
    validation_score,
)
from components.metrics import per_user_metrics, rank_targets
from components.recommender import Recommender
from components.splits import histories, temporal_split


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
