"""The shared top-K step (contract C3)."""

import numpy as np
import pandas as pd
import pytest

from components.bundle_ops import RequestError
from components.recommender import catalogue_positions, recommend_frame, top_k
from components.schemas import check_recommendations

CATALOGUE = np.array([30, 10, 20, 40], dtype=np.int64)


def test_top_k_excludes_and_orders() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.5], [4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    ids, top = top_k(scores, 3, [np.array([10]), np.array([], dtype=np.int64)], CATALOGUE)
    assert ids.tolist() == [[20, 40, 30], [30, 10, 20]]  # tie 20/40 keeps catalogue order
    np.testing.assert_allclose(top, [[0.5, 0.5, 0.1], [4.0, 3.0, 2.0]])


def test_top_k_pads_when_too_few_candidates() -> None:
    scores = np.ones((1, 4), dtype=np.float32)
    ids, top = top_k(scores, 10, [np.array([30, 10, 20, 999])], CATALOGUE)
    assert ids.tolist() == [[40, -1, -1, -1]]
    assert np.isneginf(top[0, 1:]).all()


def test_top_k_rejects_bad_input() -> None:
    with pytest.raises(RequestError, match="does not match a catalogue of 4 items"):
        top_k(np.ones((1, 3)), 2, None, CATALOGUE)
    with pytest.raises(RequestError, match="k must be at least 1"):
        top_k(np.ones((1, 4)), 0, None, CATALOGUE)
    with pytest.raises(RequestError, match="exclude has 2 entries for 1 users"):
        top_k(np.ones((1, 4)), 2, [np.array([10]), np.array([20])], CATALOGUE)


def test_positions() -> None:
    assert catalogue_positions(CATALOGUE, np.array([40, 5, 30])).tolist() == [3, -1, 0]


class _ByItemId:
    name = "by-item-id"

    def score(self, users, histories, catalogue):
        return np.tile(catalogue.astype(np.float32), (len(users), 1))


def test_recommend_frame_format() -> None:
    users = pd.DataFrame({"user_id": [1, 2]})
    frame = recommend_frame(_ByItemId(), users, [np.array([40]), np.array([30, 10, 20])], CATALOGUE, k=2,
                            batch_size=1)
    check_recommendations(frame)
    assert frame.query("user_id == 1")["item_id"].tolist() == [30, 20]
    assert frame.query("user_id == 2")["item_id"].tolist() == [40]
