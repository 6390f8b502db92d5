"""Temporal leave-last-out split with cold items (contract C2)."""

import numpy as np
import pandas as pd
import pytest

from components.splits import SplitError, cold_task, histories, temporal_split


def _frame(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """rows: (user, item, second)."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "sec"])
    return pd.DataFrame(
        {
            "user_id": df["user_id"].astype("int64"),
            "item_id": df["item_id"].astype("int64"),
            "rating": np.float32(4.0),
            "event_timestamp": pd.to_datetime(df["sec"], unit="s", utc=True).astype("datetime64[us, UTC]"),
        }
    )


@pytest.fixture
def interactions() -> pd.DataFrame:
    return _frame(
        [
            (1, 10, 1), (1, 11, 2), (1, 12, 3), (1, 13, 4),  # user 1: 4 warm events
            (2, 10, 5), (2, 12, 6),                          # user 2: only 2 -> all in train
            (3, 11, 2), (3, 12, 7), (3, 13, 8), (3, 99, 9),  # user 3 ends with the cold item 99
            (1, 98, 10), (1, 99, 11),                        # user 1 later meets cold items 98 and 99
        ]
    )


def test_leave_last_out_and_cold_items(interactions: pd.DataFrame) -> None:
    split = temporal_split(interactions, cold_start_items=2, seed=0)
    assert split.cold_items.tolist() == [98, 99]
    for frame in (split.train, split.validation, split.test):
        assert not frame["item_id"].isin([98, 99]).any()
    assert split.test.set_index("user_id")["item_id"].to_dict() == {1: 13, 3: 13}
    assert split.validation.set_index("user_id")["item_id"].to_dict() == {1: 12, 3: 12}
    assert sorted(split.train.query("user_id == 2")["item_id"]) == [10, 12]
    assert split.cold_test.set_index("user_id")["item_id"].to_dict() == {1: 99, 3: 99}
    assert len(split.cold_interactions) == 3
    assert len(split.train) + len(split.validation) + len(split.test) + len(split.cold_interactions) == 12
    assert split.summary()["cold_items"] == 2


def test_histories_are_chronological(interactions: pd.DataFrame) -> None:
    split = temporal_split(interactions, cold_start_items=2, seed=0)
    assert histories(split, "validation")[1].tolist() == [10, 11]
    assert histories(split, "test")[1].tolist() == [10, 11, 12]
    assert histories(split, "test")[2].tolist() == [10, 12]
    cold = cold_task(split, "test")
    assert cold.targets["user_id"].tolist() == [1, 3] and cold.targets["item_id"].tolist() == [99, 99]
    assert cold.histories[0].tolist() == [10, 11, 12, 13]  # non-cold events strictly before the cold target
    assert cold.histories[1].tolist() == [11, 12, 13]
    assert cold.exclude[0].tolist() == [98] and cold.exclude[1].tolist() == []  # earlier cold events of the user
    assert cold.items.tolist() == [98, 99]
    for stage in ("train", "cold"):
        with pytest.raises(SplitError):
            histories(split, stage)  # type: ignore[arg-type]
        with pytest.raises(SplitError):
            cold_task(split, stage)  # type: ignore[arg-type]


def test_every_event_cold_task_ranks_each_cold_interaction_at_its_own_time(interactions: pd.DataFrame) -> None:
    split = temporal_split(interactions, cold_start_items=2, seed=0)
    every = cold_task(split, "test", every_event=True)
    assert list(zip(every.targets["user_id"], every.targets["item_id"], strict=True)) == [(1, 98), (1, 99), (3, 99)]
    assert [h.tolist() for h in every.histories] == [[10, 11, 12, 13], [10, 11, 12, 13], [11, 12, 13]]
    assert [e.tolist() for e in every.exclude] == [[], [98], []]  # only the user's cold events before each target
    last = cold_task(split, "test")
    assert every.targets.iloc[[1, 2]].reset_index(drop=True).equals(last.targets)  # the last per user is among them


def test_cold_validation_items_come_just_before_the_cold_test_items(interactions: pd.DataFrame) -> None:
    split = temporal_split(interactions, cold_start_items=1, seed=0, cold_validation_items=1)
    # first seen: 99 at second 9, 98 at second 10 -> 98 is the newest (test), 99 the one before (validation)
    assert split.cold_items.tolist() == [98] and split.cold_validation_items.tolist() == [99]
    assert split.held_out_items.tolist() == [98, 99]
    for frame in (split.train, split.validation, split.test):
        assert not frame["item_id"].isin([98, 99]).any()
    assert split.cold_test.set_index("user_id")["item_id"].to_dict() == {1: 98}
    assert split.cold_validation.set_index("user_id")["item_id"].to_dict() == {1: 99, 3: 99}
    val = cold_task(split, "validation")
    assert val.items.tolist() == [99] and val.targets["user_id"].tolist() == [1, 3]
    assert val.histories[0].tolist() == [10, 11, 12, 13] and val.histories[1].tolist() == [11, 12, 13]
    assert len(split.cold_validation_interactions) == 2 and split.summary()["cold_validation_items"] == 1


def test_deterministic_and_order_independent(interactions: pd.DataFrame) -> None:
    tied = interactions.assign(event_timestamp=interactions["event_timestamp"].min())  # every event in one second
    a = temporal_split(tied, cold_start_items=0, seed=7)
    b = temporal_split(tied.sample(frac=1.0, random_state=3), cold_start_items=0, seed=7)
    pd.testing.assert_frame_equal(a.test, b.test)
    pd.testing.assert_frame_equal(a.train, b.train)
    seeds = {tuple(temporal_split(tied, 0, seed=s).test["item_id"]) for s in range(12)}
    assert len(seeds) > 1  # ties are broken by the seed, not by item id


def test_no_cold_items_and_errors(interactions: pd.DataFrame) -> None:
    split = temporal_split(interactions, cold_start_items=0, seed=0)
    assert len(split.cold_items) == 0 and split.cold_test.empty
    with pytest.raises(SplitError, match="cold_start_items"):
        temporal_split(interactions, cold_start_items=7, seed=0)
    with pytest.raises(SplitError, match="cold_validation_items"):
        temporal_split(interactions, cold_start_items=2, seed=0, cold_validation_items=5)
    with pytest.raises(SplitError, match="cold_validation_items must be >= 0"):
        temporal_split(interactions, cold_start_items=0, seed=0, cold_validation_items=-1)
    with pytest.raises(SplitError, match="event_timestamp"):
        temporal_split(interactions.drop(columns="event_timestamp"), cold_start_items=0, seed=0)
