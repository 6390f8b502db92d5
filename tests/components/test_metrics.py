"""Ranking metrics against hand-computed cases."""

import math

import numpy as np
import pandas as pd
import pytest

from components.dataset import Attribute, group_labels, group_order
from components.metrics import (
    MetricsError,
    bootstrap,
    coverage,
    group_breakdown,
    group_ratio,
    paired_difference,
    per_user_metrics,
    target_ranks,
)

CATALOGUE = np.array([1, 2, 3, 4, 5], dtype=np.int64)


def test_target_ranks_exclude_seen_and_ties() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],  # target 3: items 1, 2 higher; 1 is seen -> rank 2
            [0.5, 0.5, 0.5, 0.5, 0.5],  # all tied: anywhere in 1..5
            [0.1, 0.2, 0.3, 0.4, 0.5],  # target 5 best -> 1, even though it is listed as seen
            [0.1, 0.2, 0.3, 0.4, 0.5],  # target 99 not in the catalogue -> inf
        ]
    )
    exclude = [np.array([1]), np.array([], dtype=np.int64), np.array([5, 4]), np.array([1])]
    ranks = target_ranks(scores, np.array([3, 2, 5, 99]), exclude, CATALOGUE)
    assert ranks.tolist() == [[2, 2], [1, 5], [1, 1], [math.inf, math.inf]]


def test_ties_give_the_random_expectation() -> None:
    m = per_user_metrics(np.array([[1.0, 5.0], [3.0, 4.0]]), [1, 3])
    np.testing.assert_allclose(m["hr@1"], [0.2, 0.0])
    np.testing.assert_allclose(m["hr@3"], [0.6, 0.5])
    np.testing.assert_allclose(m["ndcg@3"], [(1 + 1 / math.log2(3) + 0.5) / 5, 0.5 / 2])
    np.testing.assert_allclose(m["mrr"], [(1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5, (1 / 3 + 1 / 4) / 2])
    with pytest.raises(MetricsError):
        per_user_metrics(np.array([[3.0, 2.0]]), [1])


def test_per_user_metrics_hand_computed() -> None:
    ranks = np.array([1.0, 2.0, 4.0, 11.0, math.inf])
    m = per_user_metrics(ranks, [1, 10])
    assert m["hr@1"].tolist() == [1, 0, 0, 0, 0]
    assert m["hr@10"].tolist() == [1, 1, 1, 0, 0]
    np.testing.assert_allclose(m["ndcg@10"], [1.0, 1 / math.log2(3), 1 / math.log2(5), 0.0, 0.0])
    np.testing.assert_allclose(m["mrr"], [1.0, 0.5, 0.25, 1 / 11, 0.0])
    # mean NDCG@10 by hand: (1 + 0.63093 + 0.43068) / 5
    assert m["ndcg@10"].mean() == pytest.approx((1 + 0.6309298 + 0.4306766) / 5, abs=1e-6)


def test_coverage() -> None:
    assert coverage(np.array([[1, 2], [2, -1]]), CATALOGUE) == pytest.approx(0.4)
    assert coverage(np.array([[]]), CATALOGUE) == 0.0


def test_bootstrap_contains_point_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    values = {"hr": (rng.random(300) < 0.3).astype(float), "x": rng.random(300)}
    a = bootstrap(values, samples=200, seed=1)
    b = bootstrap(values, samples=200, seed=1)
    assert a == b
    for est in a.values():
        assert est.low <= est.value <= est.high
        assert est.high - est.low < 0.2
    assert a["hr"].value == pytest.approx(values["hr"].mean())
    with pytest.raises(MetricsError):
        bootstrap({"a": np.ones(3), "b": np.ones(4)}, 10, 0)


def test_paired_difference_detects_a_real_gap() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(500)
    diff = paired_difference(base + 0.05, base, samples=100, seed=0)
    assert diff.value == pytest.approx(0.05) and diff.low > 0


def test_clustered_bootstrap_resamples_whole_users() -> None:
    rng = np.random.default_rng(0)
    values = {"hr": (rng.random(120) < 0.4).astype(float)}
    singletons = bootstrap(values, samples=300, seed=3, clusters=np.arange(120)[::-1])
    assert singletons["hr"].as_dict() == pytest.approx(bootstrap(values, samples=300, seed=3)["hr"].as_dict())
    # 12 users of 10 targets each, every target of a user alike: only 12 independent draws, so a wider interval
    # than 120 independent targets, and the mean stays the mean over targets
    per_user = (rng.random(12) < 0.4).astype(float)
    alike = {"hr": np.repeat(per_user, 10)}
    users = np.repeat(np.arange(12), 10)
    clustered = bootstrap(alike, samples=300, seed=3, clusters=users)["hr"]
    independent = bootstrap(alike, samples=300, seed=3)["hr"]
    assert clustered.value == pytest.approx(per_user.mean())
    assert clustered.high - clustered.low > 2 * (independent.high - independent.low)
    gap = paired_difference(alike["hr"] + 0.1, alike["hr"], samples=50, seed=0, clusters=users)
    assert gap.as_dict() == pytest.approx({"value": 0.1, "low": 0.1, "high": 0.1})
    with pytest.raises(MetricsError, match="clusters"):
        bootstrap(alike, 10, 0, clusters=users[:5])


def test_groups_of_declared_attributes_in_order() -> None:
    bands = Attribute(kind="bucketed", edges=[18, 25, 35, 45, 50, 56])
    assert group_labels([7, 18, 24, 25, 55, 56, 73, None], bands) == [
        "<18", "18-24", "18-24", "25-34", "50-55", "56+", "56+", "unknown"]
    tiers = Attribute(kind="categorical", categories=["gold", "silver"])
    assert group_labels(["gold", None, float("nan")], tiers) == ["gold", "unknown", "unknown"]
    labels = ["unknown", "56+", "silver", "25-34", "<18", "gold"]
    assert sorted(labels, key=group_order) == ["<18", "25-34", "56+", "gold", "silver", "unknown"]


def test_group_breakdown_and_ratio() -> None:
    per_user = {"hr@10": np.array([1.0, 0.0, 1.0, 1.0])}
    groups = {"gender": np.array(["F", "F", "M", None], dtype=object)}
    table = group_breakdown(per_user, groups, samples=50, seed=0)
    by_group = table.set_index("group")
    assert by_group.loc["F", "value"] == 0.5 and by_group.loc["F", "users"] == 2
    assert by_group.loc["M", "value"] == 1.0 and by_group.loc["unknown", "users"] == 1
    assert group_ratio(table, "gender", "hr@10") == 0.5
    assert math.isnan(group_ratio(pd.DataFrame(columns=table.columns), "gender", "hr@10"))


def test_rank_targets_in_memory_bounded_batches_match_one_batch() -> None:
    from components.metrics import rank_targets

    rng = np.random.default_rng(0)
    catalogue = np.arange(10, 60, dtype=np.int64)
    table = rng.normal(size=(30, len(catalogue))).round(1)  # rounded: ties happen

    class Table:
        name = "table"

        def score(self, users, histories, cat):
            return table[users["user_id"].to_numpy()][:, np.searchsorted(catalogue, cat)]

    users = pd.DataFrame({"user_id": np.arange(30)})
    hist = [rng.choice(catalogue, 3, replace=False) for _ in range(30)]
    targets = rng.choice(catalogue, 30)
    whole = rank_targets(Table(), users, hist, targets, catalogue, 5)
    small = rank_targets(Table(), users, hist, targets, catalogue, 5, max_cells=2 * len(catalogue) + 1)  # 2 users
    np.testing.assert_array_equal(small[0], whole[0])
    np.testing.assert_array_equal(small[1], whole[1])


def test_sample_users_is_seeded_sorted_and_all_when_small() -> None:
    from components.metrics import sample_users

    a, b = sample_users(100, 10, seed=3), sample_users(100, 10, seed=3)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 10 and (np.diff(a) > 0).all() and a.max() < 100
    assert not np.array_equal(a, sample_users(100, 10, seed=4))
    assert sample_users(100, None, 0) is None and sample_users(100, 100, 0) is None
    with pytest.raises(MetricsError, match="max_users"):
        sample_users(100, 0, 0)
