"""Feature tables from canonical tables: declared attributes and bands, activity state after each time."""

import pandas as pd
import pytest

from components.feature_tables import compute_feature_tables
from tests.components.feature_world import DATASET, LAST_N, WINDOWS, tiny_tables


def test_profile_holds_declared_attributes_and_bands():
    profile = compute_feature_tables(tiny_tables(), LAST_N, WINDOWS, DATASET)["user_profile"]
    assert list(profile.columns) == ["user_id", "age", "age_band", "gender", "occupation", "event_timestamp"]
    assert profile["age_band"].tolist() == ["<18", "25-34", "56+", "45-49"]
    metadata = compute_feature_tables(tiny_tables(), LAST_N, WINDOWS, DATASET)["item_metadata"]
    assert list(metadata["genres"].iloc[1]) == ["Comedy", "Drama"]
    years = metadata.set_index("item_id")["year"]
    assert pd.isna(years.loc[12]) and years.loc[13] == 1993  # a missing year stays missing


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


@pytest.fixture(scope="module")
def spark():
    from components.feature_tables import spark_session

    session = spark_session("local[1]", "recsys-feature-tests")
    yield session
    session.stop()


def _table(folder, name: str) -> pd.DataFrame:
    return _lists(pd.read_parquet(folder / f"{name}.parquet"))


def _lists(frame: pd.DataFrame) -> pd.DataFrame:
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: v.tolist() if hasattr(v, "tolist") else v)
    return frame


@pytest.mark.integration
def test_spark_and_duckdb_tables_are_identical(source_dataset, spark, tmp_path):
    """The same queries on both engines, over each data set shape: the same rows, values and types."""
    from components.config import load_config
    from components.feature_tables import FEATURE_TABLES, duckdb_feature_tables, spark_feature_tables
    from components.ingest import ingest

    config = load_config(source_dataset.config_path)
    ingest(config, tmp_path / "canonical")
    args = (config.dataset, 5, (2, 7))
    duck = duckdb_feature_tables(tmp_path / "canonical", tmp_path / "duckdb", *args)
    sparked = spark_feature_tables(spark, tmp_path / "canonical", tmp_path / "spark", *args)
    assert duck == sparked and min(duck.values()) > 0
    for name in FEATURE_TABLES:
        a, b = _table(tmp_path / "duckdb", name), _table(tmp_path / "spark", name)
        assert dict(a.dtypes.astype(str)) == dict(b.dtypes.astype(str)), name
        pd.testing.assert_frame_equal(a, b, obj=name)


@pytest.mark.integration
def test_spark_and_duckdb_training_examples_are_identical(source_dataset, spark, tmp_path):
    """The point-in-time join of the training examples on both engines (DuckDB's ASOF JOIN, Spark's running
    maximum), over each data set shape, with the views' own TTLs and with a TTL that drops values: the same
    rows, values and types."""
    from dataclasses import replace

    from components.config import load_config
    from components.feature_tables import duckdb_training_examples, spark_training_examples
    from components.features import build_feature_store, training_join
    from components.ingest import ingest

    config = load_config(source_dataset.config_path, [f"features.data_dir={tmp_path / 'features'}"])
    ingest(config, tmp_path / "canonical")
    store = build_feature_store(config, tmp_path / "canonical")
    hour_us = 3_600_000_000
    views = training_join(store)
    short_ttl = [replace(v, ttl_us=hour_us) if v.name == "item_popularity" else v for v in views]
    interactions = tmp_path / "canonical" / "interactions.parquet"
    profile = config.dataset.user_attributes
    for name, joined in (("own_ttl", views), ("short_ttl", short_ttl)):
        rows = duckdb_training_examples(interactions, joined, profile, tmp_path / "duckdb" / name)
        assert spark_training_examples(spark, interactions, joined, profile, tmp_path / "spark" / name) == rows > 0
        a, b = _table(tmp_path / "duckdb" / name, "examples"), _table(tmp_path / "spark" / name, "examples")
        assert dict(a.dtypes.astype(str)) == dict(b.dtypes.astype(str)), name
        assert a["recent_item_ids"].map(len).sum() > 0
        pd.testing.assert_frame_equal(a, b, obj=name)


@pytest.mark.integration
def test_features_engine_spark_writes_the_same_examples(spark, tmp_path, caplog):
    """features.engine=spark: the step's feature tables and examples come from Spark, equal to DuckDB's."""
    import logging

    from components.config import load_config
    from components.features import build_feature_store, write_training_examples
    from components.schemas import write_tables

    canonical = write_tables(tiny_tables(), tmp_path / "canonical")
    caplog.set_level(logging.INFO, logger="components.features")
    for engine in ("duckdb", "spark"):
        config = load_config(overrides=[f"features.data_dir={tmp_path / engine / 'features'}",
                                        f"features.engine={engine}", f"features.last_n_items={LAST_N}",
                                        f"features.popularity_windows_days=[{WINDOWS[0]}, {WINDOWS[1]}]"])
        store = build_feature_store(config, canonical)
        write_training_examples(config, store, canonical, tmp_path / engine / "examples")
    joins = [r.getMessage() for r in caplog.records if r.getMessage().startswith("point-in-time join")]
    assert [m.split("(")[1].split(")")[0] for m in joins] == ["duckdb", "spark"]
    duck, sparked = (_table(tmp_path / e / "examples", "examples") for e in ("duckdb", "spark"))
    assert len(duck) == len(tiny_tables()["interactions"]) and duck["user_interaction_count"].max() == 4
    pd.testing.assert_frame_equal(duck, sparked)
