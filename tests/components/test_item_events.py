"""The API's in-memory interaction counts equal the model's definition (components.model.item_event_counts), and
the bundle's popularity prior adds exactly what TwoTowerRecommender.score adds."""

import numpy as np
import pandas as pd
import pytest

from components.bundle_ops import ItemIndex, PopularityPrior, RequestError, request_top_k
from components.item_events import ItemEventIndex, datetime_us, epoch_us
from components.model import ItemEventCounter, item_event_counts


def random_events(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-03-01", tz="UTC")
    return pd.DataFrame({"user_id": rng.integers(1, 12, n), "item_id": rng.integers(100, 130, n),
                         "event_timestamp": start + pd.to_timedelta(rng.integers(0, 40 * 24 * 60, n), unit="min")})


@pytest.mark.parametrize("window", [None, 2.5, 10])
def test_counts_equal_the_models_definition(window) -> None:
    events = random_events()
    catalogue = np.arange(95, 125, dtype=np.int64)  # some event items outside the catalogue, some items without events
    index = ItemEventIndex(ItemIndex(catalogue), events.iloc[:300])
    for row in events.iloc[300:].itertuples():  # live events arrive one by one, out of time order
        index.add(row.user_id, row.item_id, int(epoch_us([row.event_timestamp])[0]))
    times = pd.to_datetime(["2024-03-05 00:00", "2024-03-20 13:07", "2024-04-15 00:00", "2024-02-01 00:00"], utc=True)
    users = pd.DataFrame({"user_id": [3, 7, 11, 99], "as_of": times})
    expected = item_event_counts(events, users, catalogue, window)
    for i, (user, t) in enumerate(zip(users.user_id, times, strict=True)):
        assert datetime_us(t.to_pydatetime()) == int(epoch_us([t])[0])
        got = index.counts(int(user), datetime_us(t.to_pydatetime()), window)
        np.testing.assert_array_equal(got, expected[i])
    assert expected.sum() > 0


def first_met_days(events: pd.DataFrame, catalogue: np.ndarray, as_of: pd.Timestamp) -> np.ndarray:
    """The velocity's age, item by item: days from the item's first event (anyone's) before as_of, else 0."""
    out = np.zeros(len(catalogue))
    for c, item in enumerate(catalogue):
        before = events.loc[(events.item_id == item) & (events.event_timestamp < as_of), "event_timestamp"]
        out[c] = (as_of - before.min()) / pd.Timedelta(days=1) if len(before) else 0.0
    return out


def test_ages_since_first_met_equal_in_the_api_and_the_model() -> None:
    events = random_events(seed=5)
    catalogue = np.arange(95, 125, dtype=np.int64)
    index = ItemEventIndex(ItemIndex(catalogue), events.iloc[200:])
    for row in events.iloc[:200].iloc[::-1].itertuples():  # earlier events arrive live, out of time order
        index.add(row.user_id, row.item_id, int(epoch_us([row.event_timestamp])[0]))
    times = pd.to_datetime(["2024-03-01 00:30", "2024-03-20 13:07", "2024-04-15 00:00", "2024-02-01 00:00"], utc=True)
    offline = ItemEventCounter(events, catalogue).ages(pd.DataFrame({"user_id": [1, 2, 3, 4], "as_of": times}))
    for i, t in enumerate(times):
        expected = first_met_days(events, catalogue, t)
        np.testing.assert_allclose(index.ages(datetime_us(t.to_pydatetime())), expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(offline[i], expected, rtol=1e-6, atol=1e-6)
    assert offline[0].max() < 1 and offline[2].min() == 0 and offline[2].max() > 40 and not offline[3].any()


def test_boost_adds_what_the_model_adds_and_refuses_bad_counts() -> None:
    ids = np.array([5, 9, 2, 7], dtype=np.int64)
    index = ItemIndex(ids)
    prior = PopularityPrior(index, {"new_item_weight": 0.3, "new_item_window_days": 7, "weight": 0.05,
                                    "window_days": None, "new_item_ids": [9, 7]})
    counts = np.array([4, 0, 2], dtype=np.float32)
    boost = prior.boost(index, np.array([9, 2, 5]), counts)
    expected = np.zeros(4, np.float32)
    expected[[1, 2, 0]] = np.array([0.3, 0.05, 0.05]) * np.log1p(counts)  # the model: weight * np.log1p(n)
    np.testing.assert_array_equal(boost, expected.astype(np.float32))
    assert [(part.rows.tolist(), part.windows) for part in prior.parts] == [([1, 3], ((7, 0.3),)),
                                                                            ([0, 2], ((None, 0.05),))]
    emb = np.eye(4, dtype=np.float32)
    top, scores = request_top_k(index, emb, np.array([0.1, 0.0, 0.0, 0.0], np.float32), np.array([5]), 2, boost)
    assert top.tolist() == [9, 2] and scores[0] == pytest.approx(0.3 * np.log1p(4))
    with pytest.raises(RequestError, match="prior_item_ids"):
        prior.boost(index, np.array([1234]), np.array([1.0]))
    with pytest.raises(RequestError, match="prior_counts"):
        prior.boost(index, np.array([5]), np.array([-1.0]))
    assert PopularityPrior(index, None).boost(index, np.array([5]), np.array([3.0])) is None


def test_a_blended_new_item_prior_serves_what_the_model_scores() -> None:
    """The fitted new-item prior (windows blended, a never-seen bonus): the API's sparse counts through the
    bundle's boost give, on every item, the model's dense boost of the same events (`PriorPart.dense_boost`), the
    velocity included."""
    events = random_events(seed=3)
    catalogue = np.arange(95, 135, dtype=np.int64)  # items 130..134 never met: they take the bonus
    index = ItemIndex(catalogue)
    new_items = catalogue[::2]
    prior = PopularityPrior(index, {"new_item_windows": [[None, 0.2], [7, 0.5], [2.5, 0.3]],
                                    "new_item_never_seen": 0.4, "new_item_offset": -0.25, "new_item_velocity": 0.35,
                                    "weight": 0.05, "window_days": 10, "new_item_ids": new_items.tolist()})
    assert prior.new_item_weight == pytest.approx(1.35) and prior.weights[0] == pytest.approx(1.35)
    events_index = ItemEventIndex(index, events)
    times = pd.to_datetime(["2024-03-02 00:00", "2024-03-20 13:07", "2024-04-15 00:00"], utc=True)
    users = pd.DataFrame({"user_id": [3, 7, 99], "as_of": times})
    for i, (user, t) in enumerate(zip(users.user_id, times, strict=True)):
        ids, counts = events_index.prior_counts(prior, int(user), datetime_us(t.to_pydatetime()))
        served = prior.boost(index, ids, counts)
        dense = np.zeros(len(catalogue), np.float32)
        for part in prior.parts:
            window_counts = [item_event_counts(events, users.iloc[[i]], catalogue[part.rows], days)[0]
                             for days, _ in part.windows]
            ages = first_met_days(events, catalogue[part.rows], t) if part.velocity else None
            dense[part.rows] = part.dense_boost(window_counts, ages)
        np.testing.assert_allclose(served, dense, rtol=1e-5, atol=1e-6)
        new_rows = np.flatnonzero(np.isin(catalogue, new_items))
        never = new_rows[~np.isin(catalogue[new_rows], ids)]
        assert len(never)
        np.testing.assert_allclose(served[never], 0.4 - 0.25, rtol=1e-6)  # never met: the bonus and the offset
        met = np.setdiff1d(new_rows, never)
        expected = prior.new_item_weight * np.log1p(counts[np.searchsorted(ids, catalogue[met])]) - 0.25
        np.testing.assert_allclose(served[met], expected, rtol=1e-5, atol=1e-6)  # every new item: the offset too
    # the blend: w * log1p(effective count) = sum of weight_t * log1p(count_t) + velocity * log1p(count / days)
    part = prior.parts[0]
    counts = [np.array([0.0, 3.0, 9.0]), np.array([0.0, 1.0, 4.0]), np.array([0.0, 0.0, 2.0])]
    ages = np.array([0.0, 6.0, 0.25])  # met 6 days ago: 0.5 a day; a quarter of a day ago: counted over one day
    expected = (0.2 * np.log1p(counts[0]) + 0.5 * np.log1p(counts[1]) + 0.3 * np.log1p(counts[2])
                + 0.35 * np.log1p([0.0, 0.5, 9.0]))
    np.testing.assert_allclose(1.35 * np.log1p(part.effective_counts(counts, ages)), expected, rtol=1e-6)
    np.testing.assert_allclose(part.dense_boost(counts, ages), expected + [0.4, 0, 0] - 0.25, rtol=1e-6)
    with pytest.raises(RequestError, match="ages"):
        part.effective_counts(counts)
    # a bonus without an all-history window gets one (the bonus needs it), weighted 0
    # an offset alone: every new item moves by it, a request without counts included; trained items stay
    only_offset = PopularityPrior(index, {"new_item_offset": -0.5, "new_item_ids": new_items.tolist()})
    moved = only_offset.boost(index, np.array([], np.int64), np.array([], np.float32))
    np.testing.assert_array_equal(moved, np.where(np.isin(catalogue, new_items), np.float32(-0.5), np.float32(0)))
    only_recent = PopularityPrior(index, {"new_item_windows": [[7, 1.0]], "new_item_never_seen": 0.1,
                                          "new_item_ids": [95]})
    assert only_recent.parts[0].windows == ((7.0, 1.0), (None, 0.0))
