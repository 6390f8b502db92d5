"""Feature store: point-in-time training examples, online = offline, pushes, unknown entities.

The online tests run against the embedded SQLite store and a real redis-server (same test functions) that
requires a password, which Feast gets from the environment.
"""

import math
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import ConfigError, load_config
from components.feature_tables import duckdb_training_examples, utc_us
from components.features import (
    build_feature_store,
    materialize,
    open_store,
    redis_connection_string,
    redis_server,
    training_examples,
    training_join,
    write_examples,
    write_training_examples,
)
from components.features_online import FeatureStoreError, online_features, online_item_features, push_interaction
from components.schemas import write_tables
from tests.components.feature_world import (
    LAST_N,
    NOW,
    PROFILE,
    REDIS_PASSWORD_ENV,
    WINDOWS,
    D,
    H,
    tiny_tables,
)
from tests.conftest import planted_tables, small_tables


def reference_examples(interactions: pd.DataFrame) -> pd.DataFrame:
    """Brute force from the raw events: for each event only what happened strictly before it."""
    rows = []
    ordered = interactions.sort_values(["user_id", "event_timestamp", "item_id"], kind="stable")
    for e in interactions.itertuples():
        before = ordered[(ordered.user_id == e.user_id) & (ordered.event_timestamp < e.event_timestamp)]
        rated = before.rating.dropna()
        on_item = interactions[(interactions.item_id == e.item_id) & (interactions.event_timestamp < e.event_timestamp)]
        row = {"user_id": e.user_id, "item_id": e.item_id, "event_timestamp": e.event_timestamp,
               "user_interaction_count": len(before),
               "user_mean_rating": float(rated.mean()) if len(rated) else np.nan,
               "user_days_since_last": ((e.event_timestamp - before.event_timestamp.max()) / D) if len(before)
               else np.nan,
               "recent_item_ids": before.item_id.tolist()[-LAST_N:]}
        for w in WINDOWS:
            row[f"item_popularity_{w}d"] = int((on_item.event_timestamp >= e.event_timestamp - w * D).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def make_config(tmp_path, backend: str = "sqlite", redis: str = "127.0.0.1:6379"):
    return load_config(overrides=[f"features.data_dir={tmp_path / 'features'}", f"features.online_store={backend}",
                                  f"features.redis_connection={redis}", f"features.last_n_items={LAST_N}",
                                  f"features.popularity_windows_days=[{WINDOWS[0]}, {WINDOWS[1]}]"])


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def online_store(request, tmp_path):
    """A built and materialized store (materialized up to NOW) on each online backend."""
    if request.param == "redis":
        server = request.getfixturevalue("local_redis")
        server.client().flushall()
        config = make_config(tmp_path, "redis", server.address)
    else:
        config = make_config(tmp_path)
    store = build_feature_store(config, tiny_tables())
    materialize(store, end=NOW)
    return store


def test_training_examples_are_point_in_time_correct(tmp_path):
    """Each example equals a brute-force computation over strictly earlier events. A latest-value join (or an
    entity time at the event itself) gives different counts, means, histories and popularities here."""
    tables = tiny_tables()
    store = build_feature_store(make_config(tmp_path), tables)
    got = training_examples(store, tables["interactions"], PROFILE)
    want = reference_examples(tables["interactions"])
    assert len(got) == len(tables["interactions"])
    pd.testing.assert_frame_equal(got[want.columns.drop("recent_item_ids")],
                                  want.drop(columns="recent_item_ids"), check_dtype=False)
    assert got.recent_item_ids.tolist() == want.recent_item_ids.tolist()
    # the case discriminates: the latest state of user 1 (5 events) never leaks into its first examples
    first = got[(got.user_id == 1)].sort_values("event_timestamp")
    assert first.user_interaction_count.tolist() == [0, 1, 1, 3, 4]
    # the event exactly one window earlier counts ([t - w, t)), the one after the window does not
    u1_13 = got[(got.user_id == 1) & (got.item_id == 13)].iloc[0]
    assert (u1_13.item_popularity_1d, u1_13.item_popularity_3d) == (1, 1)
    assert got.loc[got.user_id == 1, "age"].eq(17).all() and set(got.gender) == {"F", "M"}


def test_examples_file_has_contract_types(tmp_path):
    tables = tiny_tables()
    store = build_feature_store(make_config(tmp_path), tables)
    path = write_examples(training_examples(store, tables["interactions"], PROFILE), tmp_path / "examples")
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    assert str(schema.field("recent_item_ids").type) == "list<element: int64>"
    assert str(schema.field("event_timestamp").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("rating").type) == "float"
    for col in ("user_id", "item_id", "age", "user_interaction_count", "item_popularity_1d", "item_popularity_3d"):
        assert str(schema.field(col).type) == "int64", col
    back = pd.read_parquet(path)
    assert back.event_timestamp.dtype == "datetime64[us, UTC]"


def _examples_in_order(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.sort_values(["user_id", "event_timestamp", "item_id"], kind="stable").reset_index(drop=True)
    frame["recent_item_ids"] = frame["recent_item_ids"].map(lambda v: [int(x) for x in v])
    return frame


def _canonical(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables with µs UTC timestamps and float32 ratings, as ingest writes them."""
    out = {name: frame.copy() for name, frame in tables.items()}
    for frame, column in ((out["interactions"], "event_timestamp"), (out["users"], "created_timestamp"),
                          (out["items"], "created_timestamp")):
        frame[column] = utc_us(frame[column])
    out["interactions"]["rating"] = out["interactions"]["rating"].astype("float32")
    return out


def planted_with_genres() -> dict[str, pd.DataFrame]:
    """The planted world with the genres column the MovieLens declaration asks of items."""
    tables = planted_tables()
    tables["items"]["genres"] = "Drama"
    return tables


@pytest.mark.parametrize("world", [tiny_tables, planted_with_genres, small_tables])
def test_sql_join_equals_feasts_join(world, tmp_path):
    """The examples the features step writes (SQL point-in-time join over the feature tables) are Feast's
    `get_historical_features` examples: same rows, values and types, on each small data set."""
    tables = _canonical(world())
    config = make_config(tmp_path)
    store = build_feature_store(config, tables)
    path = write_training_examples(config, store, write_tables(tables, tmp_path / "canonical"), tmp_path / "ex")
    sql = _examples_in_order(pd.read_parquet(path))
    feast = _examples_in_order(training_examples(store, tables["interactions"], PROFILE))
    assert len(sql) == len(tables["interactions"]) and sql.user_interaction_count.max() > 0
    pd.testing.assert_frame_equal(sql, feast)


def test_sql_join_drops_values_past_a_views_ttl(tmp_path):
    """With a TTL shorter than the popularity windows, a change point older than the TTL no longer counts:
    the same as an as-of match within that tolerance (pandas merge_asof), and not the same as no TTL."""
    tables = _canonical(tiny_tables())
    config = make_config(tmp_path)
    store = build_feature_store(config, tables)
    ttl = 12 * H
    views = [replace(v, ttl_us=int(ttl / pd.Timedelta(microseconds=1))) if v.name == "item_popularity" else v
             for v in training_join(store)]
    canonical = write_tables(tables, tmp_path / "canonical")
    duckdb_training_examples(canonical / "interactions.parquet", views, PROFILE, tmp_path / "ttl")
    got = _examples_in_order(pd.read_parquet(tmp_path / "ttl" / "examples.parquet"))
    popularity = pd.read_parquet(next(v.path for v in views if v.name == "item_popularity"))
    popularity["event_timestamp"] = utc_us(popularity["event_timestamp"])
    one_us = pd.Timedelta(microseconds=1)
    entity = got[["item_id", "event_timestamp"]].assign(entity_ts=utc_us(got.event_timestamp - one_us))
    want = pd.merge_asof(entity.reset_index().sort_values("entity_ts"),
                         popularity.sort_values("event_timestamp"), left_on="entity_ts",
                         right_on="event_timestamp", by="item_id", tolerance=ttl, direction="backward")
    want = want.sort_values("index")[f"item_popularity_{WINDOWS[1]}d"].fillna(0).astype("int64").to_numpy()
    assert got[f"item_popularity_{WINDOWS[1]}d"].tolist() == want.tolist()
    untimed = _examples_in_order(training_examples(store, tables["interactions"], PROFILE))
    assert got[f"item_popularity_{WINDOWS[1]}d"].sum() < untimed[f"item_popularity_{WINDOWS[1]}d"].sum()


def test_online_values_equal_offline_values(online_store):
    store = online_store
    users = [1, 2, 3, 4]
    online = online_features(store, users, as_of=NOW).set_index("user_id")
    entity = pd.DataFrame({"user_id": users, "event_timestamp": pd.Timestamp(NOW)})
    offline = store.get_historical_features(entity_df=entity, features=store.get_feature_service("serving")).to_df()
    offline = offline.set_index("user_id").loc[users]
    for col in ("age", "age_band", "gender", "occupation"):
        assert online[col].tolist() == offline[col].tolist(), col
    assert online.user_interaction_count.tolist() == offline.user_interaction_count.fillna(0).astype(int).tolist()
    np.testing.assert_allclose(online.user_mean_rating.to_numpy(), offline.user_mean_rating.to_numpy(dtype=float))
    assert online.recent_item_ids.tolist() == [list(v) if v is not None and not (isinstance(v, float)) else []
                                               for v in offline.recent_item_ids]
    assert online.loc[1, "recent_item_ids"] == [12, 13, 10]
    assert online.loc[4, "user_interaction_count"] == 0 and online.loc[4, "age_band"] == "45-49"
    assert online.loc[1, "user_days_since_last"] == pytest.approx(1.0, abs=1e-6)

    items = online_item_features(store, [10, 13])
    item_entity = pd.DataFrame({"item_id": [10, 13], "event_timestamp": pd.Timestamp(NOW)})
    item_offline = store.get_historical_features(entity_df=item_entity,
                                                 features=store.get_feature_service("items")).to_df()
    item_offline = item_offline.set_index("item_id").loc[[10, 13]]
    for col in ("title", "year"):
        assert items[col].tolist() == item_offline[col].tolist(), col
    for col in ("item_popularity_1d", "item_popularity_3d"):  # beyond the TTL both read "no events"
        assert items[col].tolist() == item_offline[col].fillna(0).astype(int).tolist(), col
    assert items.item_popularity_3d.tolist() == [1, 0]  # item 10: one event in [NOW - 3d, NOW)


def test_the_serving_read_equals_feasts_sdk_read(online_store):
    """The API's view-by-view online read gives exactly what FeatureStore.get_online_features gives, for every
    user of the store, an unknown one, and a pushed one."""
    from components.features_online import _read_service

    store = online_store
    push_interaction(store, user_id=2, item_id=14, rating=4.0, event_timestamp=NOW, last_n=LAST_N)
    users = [*range(1, 6), 999, 2]
    sdk = store.get_online_features(features=store.get_feature_service("serving"),
                                    entity_rows=[{"user_id": u} for u in users]).to_dict()
    fast = _read_service(store, "serving", "user_id", users)
    assert set(fast) == set(sdk) and len(sdk) > 5
    for name, values in sdk.items():
        assert fast[name] == values, name
    assert fast["user_interaction_count"][5] is None and fast["recent_item_ids"][1][-1] == 14


def test_push_is_visible_online_at_once(online_store):
    store = online_store
    before = online_features(store, [1], as_of=NOW).iloc[0]
    started = time.perf_counter()
    push_interaction(store, user_id=1, item_id=14, rating=5.0, event_timestamp=NOW + timedelta(seconds=1),
                     last_n=LAST_N)
    after = online_features(store, [1], as_of=NOW + timedelta(seconds=1)).iloc[0]  # first read, no polling
    elapsed = time.perf_counter() - started
    print(f"push -> visible online in {elapsed * 1000:.1f} ms ({store.config.online_store.type})")
    assert after.user_interaction_count == before.user_interaction_count + 1
    assert after.recent_item_ids == [13, 10, 14]
    assert after.user_mean_rating == pytest.approx((before.user_mean_rating * 5 + 5.0) / 6)
    assert after.user_days_since_last == pytest.approx(0.0)
    assert after.age == before.age  # the profile view is untouched

    push_interaction(store, user_id=77, item_id=10, rating=None, last_n=LAST_N)  # a brand-new user
    new = online_features(store, [77]).iloc[0]
    assert new.user_interaction_count == 1 and new.recent_item_ids == [10] and math.isnan(new.user_mean_rating)


def test_unknown_entities_come_back_empty(online_store):
    out = online_features(online_store, [999, 1])
    unknown = out.iloc[0]
    assert unknown.user_id == 999 and pd.isna(unknown.age) and unknown.gender is None
    assert unknown.user_interaction_count == 0 and unknown.recent_item_ids == []
    assert math.isnan(unknown.user_mean_rating) and math.isnan(unknown.user_days_since_last)
    assert out.iloc[1].gender == "F"
    items = online_item_features(online_store, [999])
    assert items.title.tolist() == [None] and pd.isna(items.item_popularity_1d.iloc[0])


def test_unreachable_redis_is_a_clear_error(tmp_path, monkeypatch):
    with redis_server() as server:  # `retry=null`: fail at once instead of redis-py's 3 retries with back-off
        monkeypatch.setenv(REDIS_PASSWORD_ENV, server.password)
        store = build_feature_store(make_config(tmp_path, "redis", f"{server.address},retry=null"), tiny_tables())
    with pytest.raises(FeatureStoreError, match="redis online store"):
        online_features(store, [1])


@pytest.mark.integration
def test_redis_refuses_a_client_without_the_password(local_redis, tmp_path, monkeypatch):
    import redis

    with pytest.raises(redis.exceptions.AuthenticationError, match="Authentication required"):
        local_redis.client(authenticated=False).ping()
    wrong = redis.Redis(host="127.0.0.1", port=local_redis.port, password="not-the-password")
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()
    assert local_redis.client().config_get("protected-mode") == {"protected-mode": "yes"}
    # Feast with the password writes and reads (the online_store tests); without it, it is refused
    config = make_config(tmp_path, "redis", f"{local_redis.address},retry=null")
    store = build_feature_store(config, tiny_tables())
    materialize(store, end=NOW)
    assert online_features(store, [1]).iloc[0].user_interaction_count > 0
    monkeypatch.delenv(REDIS_PASSWORD_ENV)
    with pytest.raises(FeatureStoreError, match="redis online store.*Authentication required"):
        online_features(open_store(config), [1])


def test_the_redis_password_comes_from_the_environment_only(monkeypatch):
    features = make_config(Path("/unused")).features
    monkeypatch.delenv(REDIS_PASSWORD_ENV, raising=False)
    assert redis_connection_string(features) == features.redis_connection
    monkeypatch.setenv(REDIS_PASSWORD_ENV, 'p"w\\1')
    assert redis_connection_string(features) == features.redis_connection + ',password="p\\"w\\\\1"'
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "a,b")
    with pytest.raises(FeatureStoreError, match=f"{REDIS_PASSWORD_ENV} holds a comma"):
        redis_connection_string(features)
    with pytest.raises(ConfigError, match="redis_connection holds a password.*RECSYS_REDIS_PASSWORD"):
        load_config(overrides=["features.redis_connection=redis:6379,ssl=true,Password=x"])


def test_missing_definitions_are_reported(tmp_path):
    config = load_config(overrides=[f"features.repo_path={tmp_path}"])
    with pytest.raises(FeatureStoreError, match="definitions.py"):
        build_feature_store(config, tiny_tables())


def test_cli_apply_materialize_lookup(tmp_path):
    from typer.testing import CliRunner

    from components.schemas import write_tables
    from recsys.main import app

    canonical = write_tables(tiny_tables(), tmp_path / "canonical")
    common = ["--set", f"features.data_dir={tmp_path / 'features'}", "features"]
    runner = CliRunner()
    done = runner.invoke(app, [*common, "apply", "--canonical", str(canonical), "--examples", str(tmp_path / "ex")])
    assert done.exit_code == 0, done.output
    assert len(pd.read_parquet(tmp_path / "ex" / "examples.parquet")) == len(tiny_tables()["interactions"])
    assert runner.invoke(app, [*common, "materialize"]).exit_code == 0
    done = runner.invoke(app, [*common, "lookup", "--user-id", "3", "-u", "999"])
    assert done.exit_code == 0, done.output
    assert "writer" in done.output and "user 999" in done.output and "13 14" in done.output
    done = runner.invoke(app, ["--set", f"features.repo_path={tmp_path}", "features", "materialize"])
    assert done.exit_code == 1 and "definitions.py" in done.output


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task")
def test_features_op_runs_in_the_kfp_local_runner(tmp_path):
    """The KFP component end to end: canonical Dataset in; C1 examples, feature tables and metrics out."""
    from kfp import dsl, local

    from components.config import absolute_paths, config_to_text
    from components.features import features_op
    from components.schemas import write_tables

    canonical = write_tables(tiny_tables(), tmp_path / "canonical")
    config = absolute_paths(make_config(tmp_path))

    @dsl.pipeline(name="features-only")
    def features_pipeline(config: str):
        data = dsl.importer(artifact_uri=str(canonical), artifact_class=dsl.Dataset, reimport=False)
        features_op(config=config, canonical=data.output)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=True)
    features_pipeline(config=config_to_text(config))
    task_dir = next((tmp_path / "kfp").glob("features-only-*/features-op"))
    examples = pd.read_parquet(task_dir / "examples" / "examples.parquet")
    assert len(examples) == len(tiny_tables()["interactions"])
    want = reference_examples(tiny_tables()["interactions"])
    merged = examples.merge(want, on=["user_id", "item_id", "event_timestamp"], suffixes=("", "_ref"))
    assert (merged.user_interaction_count == merged.user_interaction_count_ref).all()
    assert sorted(p.name for p in (task_dir / "feature_tables").iterdir()) == [
        "item_events.parquet", "item_metadata.parquet", "item_popularity.parquet", "user_activity.parquet",
        "user_profile.parquet"]  # the feature tables and the events the API's popularity priors count
    # materialized: the configured online store answers for a user of the data
    from components.features import open_store

    assert online_features(open_store(config), [3]).iloc[0].occupation == "writer"


# ------------------------------------------------------------------ every data set shape (tests.conftest.SOURCES)
@pytest.mark.integration
def test_features_step_over_each_data_set(source_dataset, tmp_path):
    """ingest -> validate -> the features step (real Feast, SQLite online): the declared attributes are the
    profile and metadata features, offline in the examples and online for the API."""
    from components.features import open_store, run_features
    from components.features_online import online_feature_rows
    from components.ingest import ingest
    from components.schemas import read_tables
    from components.validate import validate

    config = load_config(source_dataset.config_path, [f"features.data_dir={tmp_path / 'features'}"])
    ingest(config, tmp_path / "canonical")
    validate(config, tmp_path / "canonical", tmp_path / "validated", tmp_path / "docs")
    metrics = run_features(config, tmp_path / "validated", tmp_path / "examples", tmp_path / "tables")
    schema = config.dataset
    examples = pd.read_parquet(tmp_path / "examples" / "examples.parquet")
    assert metrics["examples"] == len(examples) > 0
    assert set(schema.user_attributes) <= set(examples.columns)
    tables = read_tables(tmp_path / "validated")
    user = tables["users"].iloc[0]
    row = online_feature_rows(open_store(config), [int(user["user_id"])])[0]
    for name, attr in schema.user_attributes.items():
        assert str(row[name]) == str(user[name])
        if attr.kind == "bucketed":
            from components.dataset import bucket_label

            assert row[f"{name}_band"] == bucket_label(user[name], attr.edges)
    items = online_item_features(open_store(config), [int(tables["items"]["item_id"].iloc[0])])
    assert set(schema.item_attributes) <= set(items.columns)
    multi = [n for n, a in schema.item_attributes.items() if a.kind == "multi_categorical"]
    for name in multi:
        assert isinstance(items[name].iloc[0], list)
