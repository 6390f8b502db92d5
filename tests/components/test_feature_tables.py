"""Feature tables from canonical tables: declared attributes and bands, activity state after each time."""

from components.feature_tables import compute_feature_tables
from tests.components.test_features import DATASET, LAST_N, WINDOWS, tiny_tables


def test_profile_holds_declared_attributes_and_bands():
    profile = compute_feature_tables(tiny_tables(), LAST_N, WINDOWS, DATASET)["user_profile"]
    assert list(profile.columns) == ["user_id", "age", "age_band", "gender", "occupation", "event_timestamp"]
    assert profile["age_band"].tolist() == ["<18", "25-34", "56+", "45-49"]
    metadata = compute_feature_tables(tiny_tables(), LAST_N, WINDOWS, DATASET)["item_metadata"]
    assert metadata["genres"].iloc[1] == ["Comedy", "Drama"] and str(metadata["year"].dtype) == "Int64"


def test_activity_rows_hold_state_after_each_distinct_time():
    tables = compute_feature_tables(tiny_tables(), LAST_N, WINDOWS, DATASET)
    act = tables["user_activity"]
    user1 = act[act.user_id == 1].reset_index(drop=True)
    assert len(user1) == 4  # the two events at T0 + 1h share one row
    assert user1.user_interaction_count.tolist() == [1, 3, 4, 5]
    assert user1.recent_item_ids.iloc[1] == [10, 11, 12]
    assert user1.recent_item_ids.iloc[3] == [12, 13, 10]
    user2 = act[act.user_id == 2]
    assert user2.user_rated_count.tolist() == [1, 1, 2]  # the implicit event (no rating) does not count
    assert user2.user_mean_rating.tolist() == [4.0, 4.0, 3.0]
