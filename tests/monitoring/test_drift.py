"""Evidently drift: found on shifted data, not on a sample of the same distribution; pinned methods."""

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import DriftResult, DriftSettings, drift_share, embedding_drift, feature_drift

SETTINGS = DriftSettings(num_method="wasserstein", cat_method="jensenshannon", threshold=0.1, min_rows=30,
                         embedding_auc_threshold=0.55, embedding_max_rows=2000, seed=0)


def users(n: int, seed: int, age_shift: float = 0.0, women: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.normal(32 + age_shift, 9, n).round(),
                         "gender": rng.choice(["F", "M"], n, p=[women, 1 - women]),
                         "occupation": rng.choice(["artist", "doctor", "engineer", "student"], n)})


@pytest.mark.parametrize("n", [300, 3000])  # both sides of Evidently's 1000-row switch: same method, same meaning
def test_same_distribution_is_not_drift(n: int) -> None:
    result = feature_drift("users", users(2000, 1), users(n, 2), ["age"], ["gender", "occupation"], SETTINGS)
    assert result.status == "ok" and result.drifted == 0, result.columns
    assert {c["method"] for c in result.columns.values()} == {"wasserstein", "jensenshannon"}
    assert all(c["value"] < 0.1 for c in result.columns.values())


def test_shifted_distribution_is_drift(tmp_path) -> None:
    result = feature_drift("users", users(2000, 1), users(400, 2, age_shift=12, women=0.7), ["age"],
                           ["gender", "occupation"], SETTINGS, tmp_path / "drift.html")
    assert result.columns["age"]["drifted"] and result.columns["gender"]["drifted"]
    assert not result.columns["occupation"]["drifted"]
    assert result.share == pytest.approx(2 / 3) and result.as_dict()["drifted"] == 2
    html = (tmp_path / "drift.html").read_text()
    assert result.html == "drift.html" and "drawDashboard" in html and "<script src=" not in html  # JS inlined


def test_too_few_rows_is_skipped() -> None:
    result = feature_drift("users", users(2000, 1), users(10, 2), ["age"], [], SETTINGS)
    assert result.status == "skipped" and "too few rows" in result.reason and result.share is None


def test_embedding_drift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(1500, 16))
    same = embedding_drift("users", reference, rng.normal(size=(800, 16)), SETTINGS)
    moved = embedding_drift("users", reference, rng.normal(size=(800, 16)) + 0.4, SETTINGS)
    assert not same.columns["users"]["drifted"] and same.columns["users"]["value"] < 0.55
    assert moved.columns["users"]["drifted"] and moved.columns["users"]["value"] > 0.7


def test_drift_share_counts_evaluated_columns() -> None:
    a = DriftResult("a", "ok", columns={"x": {"drifted": True}, "y": {"drifted": False}})
    b = DriftResult("b", "ok", columns={"z": {"drifted": True}})
    skipped = DriftResult("c", "skipped", reason="too few rows")
    assert drift_share([a, b, skipped]) == (pytest.approx(2 / 3), 2, 3)
    assert drift_share([skipped]) == (None, 0, 0)
