"""Online = offline: for every user of a data set (MovieLens-shaped with integer ids; a shop with string ids
through the id maps), the API's top-10 (the request engine over the real Feast
store, the in-process ensemble of the served bundle and the interactions the priors count) equals batch
`recsys recommend` of the same trained model at the same time: same items in the same order, scores within 1e-4,
items without a trained ID embedding included with their popularity prior."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.serving_stack import serving_config
from components.config import Config, load_config
from components.features import build_feature_store, materialize
from components.recommend import recommend
from components.schemas import write_tables
from serving import triton_repo as tr
from serving.engine import Engine, ReferenceScorer
from tests.conftest import planted_tables, shop_source
from tests.serving.prior_bundle import bundle_of, model_with_priors

K = 10


def planted_world(root: Path, planted_model: Path) -> tuple[Config, Path, Path, dict]:
    """The MovieLens-shaped planted data set (integer ids are their own keys) and its trained model."""
    tables = planted_tables()
    tables["items"]["genres"] = ["Drama" if i % 2 else "Comedy|Action" for i in tables["items"]["item_id"]]
    config = serving_config(root)
    config.data.id_maps_dir = root / "id_maps"  # none: integer ids are their own keys
    return config, planted_model, write_tables(tables, root / "canonical"), tables


def shop_world(root: Path) -> tuple[Config, Path, Path, dict]:
    """The synthetic shop (string ids, implicit events, its own attributes), ingested and a tiny model trained."""
    from components.ingest import ingest
    from components.schemas import ID_MAPS, read_tables
    from components.train import train_model
    from components.train_data import examples_from_tables

    source = shop_source(root / "source")
    overrides = {**TINY_MODEL, "paths.data_dir": str(root / "data")}
    config = load_config(source.config_path, [f"{k}={v}" for k, v in overrides.items()])
    config.serving = serving_config(root).serving
    canonical = root / "canonical"
    ingest(config, canonical)
    config.data.id_maps_dir = canonical / ID_MAPS
    tables = read_tables(canonical)
    (root / "examples").mkdir()
    examples_from_tables(tables, 20, config.dataset).to_parquet(root / "examples" / "examples.parquet")
    train_model(config, canonical, root / "examples", root / "trained", progress=False)
    return config, root / "trained", canonical, tables


TINY_MODEL = {"model.embedding_dim": 16, "model.max_seq_len": 8, "model.user_layers": 1, "model.user_heads": 2,
              "model.ensemble_members": 2,  # the shop's model is an ensemble: parity holds for the default kind
              "train.epochs": 3, "train.batch_size": 64, "train.max_minutes": 1, "evaluate.cold_start_items": 0}


@pytest.fixture(scope="module", params=["movielens", "shop"])
def served(request, tmp_path_factory):
    """The engine over the parity bundle (in-process ensemble) and the batch lists of every user at the data's
    last event + 1 day, for each data-set shape."""
    root = tmp_path_factory.mktemp(f"parity-{request.param}")
    if request.param == "shop":
        config, trained, canonical, tables = shop_world(root)
    else:
        config, trained, canonical, tables = planted_world(root, request.getfixturevalue("planted_model"))
    as_of = pd.Timestamp(tables["interactions"]["event_timestamp"].max()).to_pydatetime() + timedelta(days=1)
    model_dir = model_with_priors(trained, root / "model")
    config.features.data_dir = root / "features"
    config.features.last_n_items = 200  # the store keeps each user's whole history: the batch side sees it too
    config.serving.request_log = root / "request_log.sqlite"
    materialize(build_feature_store(config, canonical), end=as_of)
    version = tr.write_version(bundle_of(model_dir, root / "bundle"), config.serving.model_repository)
    scorer = ReferenceScorer({version: root / "bundle"})
    engine = Engine(config, new_scorer=lambda: scorer, watch=False, clock=lambda: as_of)
    users = [engine.live.users.external(int(key)) for key in tables["users"]["user_id"]]
    pd.DataFrame({"user_id": users}).to_csv(root / "users.csv", index=False)
    batch = recommend(model_dir, root / "users.csv", canonical, K, True, root / "recs.parquet", as_of=as_of)
    try:
        yield engine, batch, users, root / "bundle", as_of
    finally:
        engine.close()


def assert_equal_to_batch(engine: Engine, batch: pd.DataFrame, users: list) -> int:
    """Every user's API answer equals the batch list; returns how many new items were served in all."""
    priors = engine.live.priors
    new_ids = {engine.live.items.external(int(i)) for i in priors.events.index.item_ids[priors.prior.is_new]}
    assert len(new_ids) >= 6  # the six made new, and any the training data did not hold
    served_new = 0
    for user_id in users:
        req = engine.models.RecommendRequest.model_validate({"user_id": user_id, "k": K})
        answer = engine.recommend(req, reveal_history=False)
        assert answer.model_version == "m-parity" and not answer.degraded and not answer.cold_start
        expected = batch[batch["user_id"] == user_id].sort_values("rank")
        assert [i.item_id for i in answer.items] == expected["item_id"].tolist(), f"user {user_id}"
        np.testing.assert_allclose([i.score for i in answer.items], expected["score"], atol=1e-4)
        served_new += len(new_ids & {i.item_id for i in answer.items})
    return served_new


def test_the_apis_top10_equals_batch_recommend_for_every_user(served):
    engine, batch, users, _, as_of = served
    assert len(batch) == K * len(users)
    assert assert_equal_to_batch(engine, batch, users) > 0  # new items rank, by their prior
    # the prior moves the ranking: without the counts the scores are the bare cosines
    ref = engine._client._references[1]
    history = ref.index.item_ids[:5].tolist()
    ids, counts = engine.live.priors.counts(None, as_of)
    assert len(ids) and (counts > 0).all()
    profile = [0] * len(ref.sizes)
    assert not np.allclose(ref.recommend(history, profile, history, K, ids, counts)[1],
                           ref.recommend(history, profile, history, K)[1])


@pytest.mark.integration
@pytest.mark.parametrize("served", ["shop"], indirect=True)
@pytest.mark.parametrize("layout", ["steps", "graph"])
def test_through_real_triton_the_apis_top10_equals_batch_recommend(served, triton, layout):
    """Both layouts of the retrieval on a real Triton: the three-step ensemble and the one ONNX graph."""
    from serving import deploy

    engine, batch, users, bundle, as_of = served
    triton_config = triton[0].model_copy(deep=True)
    triton_config.serving.retrieval_layout = layout
    result = deploy.deploy_bundle(triton_config, bundle)
    assert result.status == "active"
    config = engine.config.model_copy(deep=True)
    for key in ("host", "triton_grpc_port", "model_repository", "retrieval_layout"):
        setattr(config.serving, key, getattr(triton_config.serving, key))
    config.serving.request_log = Path(engine.config.serving.request_log).parent / f"triton_{layout}.sqlite"
    over_triton = Engine(config, watch=False, clock=lambda: as_of)
    try:
        assert over_triton.triton.up and over_triton.live.priors.prior.active
        assert over_triton.live.model.version == result.version
        assert over_triton._client.infer_model == ("recommender_graph" if layout == "graph" else "recommender")
        assert assert_equal_to_batch(over_triton, batch, users) > 0
    finally:
        over_triton.close()


def all_history_count(priors, user_key: int, as_of: datetime, item_id: int) -> float:
    """One item's interactions by users other than `user_key` before `as_of`, as the API's event index counts them
    (the new-item prior blends several windows of these into the one count a request carries)."""
    from components.item_events import datetime_us

    row = int(priors.events.index.rows(np.array([item_id]))[0])
    return float(priors.events.counts(user_key, datetime_us(as_of), None)[row])


def test_a_logged_interaction_counts_for_other_users_from_the_next_request(served):
    engine, _, users, _, as_of = served
    priors = engine.live.priors
    later = datetime.now(UTC) + timedelta(minutes=1)
    me, other = engine.live.users.key(users[0]), engine.live.users.key(users[1])
    for key in (int(priors.events.index.item_ids[0]), int(priors.events.index.item_ids[-1])):  # new, trained
        before, own_before = all_history_count(priors, other, later, key), all_history_count(priors, me, later, key)
        served_before = dict(zip(*priors.counts(other, later), strict=True)).get(key, 0.0)
        earlier = priors.counts(other, as_of)
        body = {"user_id": users[0], "item_id": engine.live.items.external(key)}
        answer = engine.interaction(engine.models.InteractionRequest.model_validate(body), reveal_history=False)
        assert answer.logged
        assert all_history_count(priors, other, later, key) == before + 1
        assert all_history_count(priors, me, later, key) == own_before  # not the user's own
        assert dict(zip(*priors.counts(other, later), strict=True))[key] > served_before  # what the request carries
        np.testing.assert_array_equal(priors.counts(other, as_of)[1], earlier[1])  # not before it happened
    scorer = engine._client  # a restarted API counts the interactions logged since the feature tables were built
    restarted = Engine(engine.config, new_scorer=lambda: scorer, watch=False, clock=lambda: as_of)
    try:
        for user in (me, other):
            for got, want in zip(restarted.live.priors.counts(user, later), priors.counts(user, later), strict=True):
                np.testing.assert_array_equal(got, want)
    finally:
        restarted.close()


@pytest.mark.integration
@pytest.mark.parametrize("served", ["movielens"], indirect=True)
def test_workers_sharing_a_postgres_log_count_each_others_interactions(served, postgres):
    """API workers (or replicas) over one PostgreSQL log: an interaction logged by one is counted by the priors of
    every one, once, from the log (each process's own included), and a restarted one counts the same."""
    import uuid

    engine, _, users, _, as_of = served
    config = engine.config.model_copy(deep=True)
    config.serving.request_log = postgres.create_database(f"workers_{uuid.uuid4().hex[:12]}")
    scorer = engine._client
    workers = [Engine(config, new_scorer=lambda: scorer, watch=False, clock=lambda: as_of) for _ in range(2)]
    later = datetime.now(UTC) + timedelta(minutes=1)
    try:
        one, two = workers
        other = one.live.users.key(users[1])
        key = int(one.live.priors.events.index.item_ids[0])
        before = [all_history_count(w.live.priors, other, later, key) for w in workers]
        body = {"user_id": users[0], "item_id": one.live.items.external(key)}
        assert one.interaction(one.models.InteractionRequest.model_validate(body), reveal_history=False).logged
        assert [w.follow_log() for w in workers] == [1, 1] and [w.follow_log() for w in workers] == [0, 0]
        after = [all_history_count(w.live.priors, other, later, key) for w in workers]
        assert after == [b + 1 for b in before]
        restarted = Engine(config, new_scorer=lambda: scorer, watch=False, clock=lambda: as_of)
        workers.append(restarted)
        assert restarted.follow_log() == 0  # counted at its start, not again
        for got, want in zip(restarted.live.priors.counts(other, later), two.live.priors.counts(other, later),
                             strict=True):
            np.testing.assert_array_equal(got, want)
    finally:
        for worker in workers:
            worker.close()
