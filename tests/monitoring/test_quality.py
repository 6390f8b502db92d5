"""Online quality of logged recommendations, checked by hand on a constructed log."""

import math

import pandas as pd
import pytest

from monitoring.quality import daily_quality, per_request_quality, relative_drop, summarise

T = pd.Timestamp("2026-03-01 12:00", tz="UTC")
H = pd.Timedelta(hours=24)


def frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    requests = pd.DataFrame({"request_id": ["a", "b", "c", "d"], "ts": [T, T, T, T + pd.Timedelta(days=3)],
                             "user_id": [1, 2, 3, 1]})
    recs = pd.DataFrame({"request_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3,
                         "item_id": [10, 11, 12, 20, 21, 22, 30, 31, 32, 10, 11, 12],
                         "rank": [1, 2, 3] * 4})
    h = pd.Timedelta(hours=1)
    inter = pd.DataFrame({
        "user_id": [1, 1, 1, 2, 3, 3, 1],
        # user 1: item 12 (rank 3) and 99 within the horizon, item 10 after it; user 2: item 21 (rank 2);
        # user 3: only an interaction before the request and one after the horizon; request d: horizon not over
        "item_id": [12, 99, 10, 21, 30, 31, 11],
        "event_timestamp": [T + h, T + 2 * h, T + 30 * h, T + h, T - h, T + 25 * h, T + pd.Timedelta(days=3) + h],
    })
    return requests, recs, inter


def test_hit_rate_and_ndcg_by_hand() -> None:
    requests, recs, inter = frames()
    q = per_request_quality(requests, recs, inter, k=3, horizon=H).set_index("request_id")
    assert list(q["evaluable"]) == [True, True, False, False]  # c: nothing in horizon; d: horizon not over
    assert q.loc["a", "relevant"] == 2 and q.loc["a", "hit"] == 1.0
    # a: relevant {12, 99}; DCG = 1/log2(4); IDCG = 1 + 1/log2(3)
    assert q.loc["a", "ndcg"] == pytest.approx((1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert q.loc["b", "ndcg"] == pytest.approx(1 / math.log2(3))  # one relevant item at rank 2
    assert math.isnan(q.loc["c", "hit"]) and math.isnan(q.loc["d", "ndcg"])
    s = summarise(q.reset_index())
    assert s == {"requests": 4, "evaluable_requests": 2, "hit_rate": 1.0,
                 "ndcg": pytest.approx((q.loc["a", "ndcg"] + q.loc["b", "ndcg"]) / 2)}


def test_cut_off_and_horizon() -> None:
    requests, recs, inter = frames()
    q = per_request_quality(requests, recs, inter, k=2, horizon=H).set_index("request_id")
    assert q.loc["a", "hit"] == 0.0 and q.loc["a", "ndcg"] == 0.0  # item 12 is at rank 3 > k
    wide = per_request_quality(requests, recs, inter, k=3, horizon=pd.Timedelta(hours=26)).set_index("request_id")
    assert bool(wide.loc["c", "evaluable"]) and wide.loc["c", "hit"] == 1.0  # item 31 now inside the horizon


def test_summaries() -> None:
    assert relative_drop(0.5, 0.4) == pytest.approx(0.2)
    assert relative_drop(None, 0.4) is None and relative_drop(0.0, 0.1) is None
    empty = per_request_quality(pd.DataFrame(columns=["request_id", "ts", "user_id"]), pd.DataFrame(),
                                pd.DataFrame(), 10, H)
    assert summarise(empty) == {"requests": 0, "evaluable_requests": 0, "hit_rate": None, "ndcg": None}
    requests, recs, inter = frames()
    daily = daily_quality(per_request_quality(requests, recs, inter, k=3, horizon=H))
    assert len(daily) == 1 and daily["requests"].iloc[0] == 2
