"""The API's request logic without servers: the request engine (serving.engine) over a real Feast store (SQLite,
in process), the in-process ensemble (ReferenceScorer over real serving bundles) and a real SQLite request log.
Exclusions, filters, cold start, history merge, outages and version switches, string user ids through the id map,
and the log of served lists."""

import copy
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from components.dataset import IdColumn
from components.id_maps import IdMap, save_id_maps
from components.processes import free_port
from components.request_log import RequestLogError
from serving.catalogue import ServiceError
from serving.engine import POPULARITY_VERSION, Engine, ReferenceScorer, dependency_down
from serving.triton_client import TritonClientError
from tests.serving.engine_world import LAST_N, ask, ids_and_scores


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_known_user_is_ranked_by_the_model_with_seen_items_excluded(world, engine, exclude_seen):
    history, profile = world.user_state(3)
    response = ask(engine, user_id=3, k=7, exclude_seen=exclude_seen)
    want_ids, want_scores = world.expected(1, history, profile, history if exclude_seen else [], 7)
    assert not response.degraded and not response.cold_start, response.reasons
    assert response.model_version == world.references[1].manifest["model_version"]
    got_ids, got_scores = ids_and_scores(response)
    assert got_ids == want_ids.tolist()
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    assert [i.rank for i in response.items] == list(range(1, 8))
    assert not exclude_seen or not set(history) & set(got_ids)
    items = world.tables["items"].set_index("item_id")
    for item in response.items:
        assert item.source == "model" and item.title == items.loc[item.item_id, "title"]
        assert item.genres == items.loc[item.item_id, "genres"].split("|")
        assert item.closest_recent_item_id in history and "closest to your recent 'Movie" in item.explanation
    assert set(response.timings_ms) == {"feast", "triton", "log", "service", "total"}


def test_explanations_name_no_recent_item_to_callers_who_may_not_read_the_history(world, engine):
    history, _ = world.user_state(4)
    response = ask(engine, reveal_history=False, user_id=4, k=5)
    assert all(i.closest_recent_item_id is None for i in response.items)
    assert {i.explanation for i in response.items} == {"close to your recent interactions"}
    assert not any(f"Movie {h}" in i.explanation for h in history for i in response.items)


@pytest.mark.parametrize("filters", [{"genres": ["Horror"]}, {"year_min": 1990, "year_max": 1995},
                                     {"genres": ["sci-fi", "Romance"], "year_min": 1970}])
def test_filters_keep_only_matching_items_in_model_order(world, engine, filters):
    history, profile = world.user_state(7)
    response = ask(engine, user_id=7, k=10, filters=filters)
    items = world.tables["items"].set_index("item_id")
    wanted_genres = {g.lower() for g in filters.get("genres", [])}

    def passes(item_id: int) -> bool:
        row = items.loc[item_id]
        genres_ok = not wanted_genres or bool(wanted_genres & {g.lower() for g in row.genres.split("|")})
        return genres_ok and filters.get("year_min", -math.inf) <= row.year <= filters.get("year_max", math.inf)

    got, _ = ids_and_scores(response)
    assert len(got) == 10 and not response.degraded and all(passes(i) for i in got)
    assert not set(history) & set(got)
    full, _ = world.expected(1, history, profile, history, len(items))
    passing = [int(i) for i in full if passes(int(i))]  # the model's order over the whole catalogue
    model_items = [i.item_id for i in response.items if i.source == "model"]
    assert model_items == passing[:10]
    if len(passing) < 10:  # fewer items in the catalogue pass: popular ones fill up, and the response says so
        assert any("popular items fill up" in r for r in response.reasons)


def test_a_filter_the_users_taste_disagrees_with_is_still_ranked_by_the_model(world, engine):
    """The items passing the filter sit so low in the user's ranking that the over-fetch for the filter's share of
    the catalogue misses them: the engine ranks over the whole catalogue rather than fill up with popular items."""
    history, profile = world.user_state(7)
    items = world.tables["items"].set_index("item_id")
    full = [int(i) for i in world.expected(1, history, profile, history, len(items))[0]]
    k, slack = 5, 1.5
    years = sorted(items["year"].unique())
    for low, high in ((a, b) for a in years for b in years if a <= b):
        passes = items["year"].between(low, high)
        passing = [i for i in full if passes[i]]
        fetch = math.ceil(k / passes.mean() * slack)
        if len(passing) >= k and full.index(passing[k - 1]) >= fetch:  # the first over-fetch holds fewer than k
            break
    else:
        pytest.fail("the test world has no year range whose items the user ranks low enough")
    response = ask(engine, user_id=7, k=k, filters={"year_min": int(low), "year_max": int(high)})
    assert [(i.item_id, i.source) for i in response.items] == [(i, "model") for i in passing[:k]]
    assert not response.degraded and not any("fill up" in r for r in response.reasons)


def test_unknown_user_is_ranked_from_the_given_profile_or_by_popularity(world, engine):
    profile = {"age": 30, "gender": "F", "occupation": "doctor"}
    with_profile = ask(engine, user_id=424242, k=5, profile=profile)
    assert with_profile.cold_start and not with_profile.degraded
    assert ids_and_scores(with_profile)[0] == world.expected(1, [], profile, [], 5)[0].tolist()
    other = ask(engine, user_id=424242, k=5, profile={"age": 60, "gender": "M", "occupation": "artist"})
    assert ids_and_scores(other)[0] != ids_and_scores(with_profile)[0], "the profile must change the ranking"
    assert {i.explanation for i in with_profile.items} == {"matches your profile"}

    anonymous = ask(engine, user_id=424243, k=5)
    assert anonymous.cold_start and not anonymous.degraded and anonymous.model_version == POPULARITY_VERSION
    assert anonymous.reasons == ["unknown user without a profile: popularity"]
    inter = world.tables["interactions"]
    recent = inter[inter.event_timestamp > inter.event_timestamp.max() - pd.Timedelta(days=30)]
    counts = recent.item_id.value_counts()
    got = ids_and_scores(anonymous)[0]
    assert [counts.get(i, 0) for i in got] == sorted(counts.to_numpy(), reverse=True)[:5]
    assert all(i.source == "popularity" for i in anonymous.items)


def test_a_known_users_stored_profile_wins_over_the_request_profile(world, engine):
    history, profile = world.user_state(6)
    response = ask(engine, user_id=6, k=5, profile={"age": 61, "gender": "M", "occupation": "artist"})
    assert not response.cold_start
    assert ids_and_scores(response)[0] == world.expected(1, history, profile, history, 5)[0].tolist()


def test_an_interaction_is_merged_into_the_history_of_the_next_request(world, engine):
    history, profile = world.user_state(9)
    new_item = ask(engine, user_id=9, k=5).items[0].item_id
    pushed = engine.interaction(engine.models.InteractionRequest.model_validate(
        {"user_id": 9, "item_id": new_item, "rating": 5.0}), reveal_history=True)
    merged = (history + [new_item])[-LAST_N:]
    assert pushed.pushed and not pushed.degraded and pushed.recent_item_ids == merged
    after = ask(engine, user_id=9, k=5)
    assert new_item not in ids_and_scores(after)[0]
    assert ids_and_scores(after)[0] == world.expected(1, merged, profile, merged, 5)[0].tolist()
    hidden = engine.interaction(engine.models.InteractionRequest.model_validate(
        {"user_id": 9, "item_id": new_item}), reveal_history=False)
    assert hidden.pushed and hidden.recent_item_ids == []
    logged = engine.request_log.interactions_frame()
    assert ((logged.user_id == 9) & (logged.item_id == new_item)).sum() == 2


def test_every_served_list_is_logged_as_answered(world, engine):
    answers = [ask(engine, user_id=11, k=4, filters={"genres": ["Drama"]}),
               ask(engine, user_id=424244, k=3, profile={"gender": "M"}), ask(engine, user_id=424245, k=2)]
    logged = engine.request_log.requests_frame().set_index("request_id")
    for response in answers:
        row = logged.loc[response.request_id]
        assert list(row.item_ids) == [i.item_id for i in response.items]
        np.testing.assert_allclose(list(row.scores), [i.score for i in response.items])
        assert (row.model_version, bool(row.degraded), bool(row.cold_start)) == (
            response.model_version, response.degraded, response.cold_start)
    assert logged.loc[answers[0].request_id].filters == {"genres": ["Drama"]}
    assert logged.loc[answers[1].request_id].profile == {"gender": "M"}
    ranks = engine.request_log.recommendations_frame()
    assert ranks[ranks.request_id == answers[0].request_id].sort_values("rank").item_id.tolist() == [
        i.item_id for i in answers[0].items]


def test_scorer_outage_degrades_to_popularity_then_recovers(world):
    engine, scorer = world.engine()
    try:
        scorer.serve({})  # nothing loaded: the ensemble is unavailable for everyone
        assert not engine.check_triton() and not engine.health()["triton"]["up"]
        down = ask(engine, user_id=3, k=5)
        assert down.degraded and down.model_version == POPULARITY_VERSION
        assert all(i.source == "popularity" for i in down.items) and len(down.items) == 5
        assert down.reasons[0].startswith("Triton unavailable:") and "has no 'recommender' loaded" in down.reasons[0]
        assert engine.ready(), "an outage of the scorer must not make the API unready"
        scorer.serve({1: world.bundles[1]})
        assert engine.check_triton()
        assert not ask(engine, user_id=3, k=5).degraded
    finally:
        engine.close()


def test_a_version_that_left_during_a_request_is_replaced_by_the_new_one_end_to_end(world):
    engine, scorer = world.engine(versions=(1,))
    try:
        assert engine.model.version == 1
        scorer.serve({2: world.bundles[2]})  # a switch finished after the engine last looked
        history, profile = world.user_state(5)
        response = ask(engine, user_id=5, k=6, exclude_seen=False)
        assert not response.degraded, response.reasons
        assert response.model_version == world.references[2].manifest["model_version"]
        want_ids, want_scores = world.expected(2, history, profile, [], 6)
        assert ids_and_scores(response)[0] == want_ids.tolist()
        np.testing.assert_allclose(ids_and_scores(response)[1], want_scores, rtol=1e-5, atol=1e-5)
        assert engine.model.version == 2
    finally:
        engine.close()


def test_feature_store_outage_degrades_recommend_and_logs_interactions_unpushed(world):
    down = copy.deepcopy(world.config)  # a Redis online store where nothing listens: a real connection failure
    down.features.online_store = "redis"
    down.features.redis_connection = f"127.0.0.1:{free_port()},retry=null"
    engine, _ = world.engine(config=down)
    try:
        assert not engine.health()["feature_store"]["up"]
        response = ask(engine, user_id=3, k=5)
        assert response.degraded and response.model_version == POPULARITY_VERSION and len(response.items) == 5
        assert response.reasons[0].startswith("feature store unavailable")
        event = engine.interaction(engine.models.InteractionRequest.model_validate(
            {"user_id": 3, "item_id": int(world.tables["items"].item_id.iloc[0])}), reveal_history=True)
        assert event.logged and not event.pushed and event.degraded
        assert event.reason.startswith("feature store unavailable")
        assert (engine.request_log.interactions_frame().user_id == 3).sum() >= 1
    finally:
        engine.close()


def test_look_ups_that_arrive_during_a_read_share_the_next_one(world, engine):
    """While the Feast thread is busy, eight requests queue their look-ups; they are answered by ONE online read,
    each with its own user's features (the same answer as alone)."""
    users = [3, 4, 5, 6, 3, 7, 8, 9]  # a user twice: duplicate keys in one read
    alone = {u: ids_and_scores(ask(engine, user_id=u, k=5)) for u in set(users)}
    busy, release = threading.Event(), threading.Event()
    engine._feast_pool.submit(lambda: (busy.set(), release.wait(5)))  # hold the Feast thread
    assert busy.wait(5)
    reads_before = engine.feature_reads
    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        answers = [pool.submit(ask, engine, user_id=u, k=5) for u in users]
        deadline = time.monotonic() + 5
        while len(engine._pending_reads) < len(users) and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = len(engine._pending_reads)
        release.set()
        responses = [a.result() for a in answers]
    assert queued == len(users)
    assert engine.feature_reads - reads_before == 1
    for user, response in zip(users, responses, strict=True):
        assert not response.degraded, response.reasons
        assert ids_and_scores(response) == alone[user]


def test_a_batch_is_answered_as_each_request_alone_with_one_read_and_one_commit(world, engine):
    """recommend_many: every request of a batch gets the answer it gets alone (model, cold start, filters,
    diversity), from one online read and one log commit; a request the log refuses fails alone."""
    bodies = [{"user_id": 3, "k": 5}, {"user_id": 4, "k": 3, "filters": {"genres": ["Drama"]}},
              {"user_id": 424244, "k": 4, "profile": {"gender": "M"}}, {"user_id": 5, "k": 6, "exclude_seen": False},
              {"user_id": 6, "k": 5, "diversity": 0.5}, {"user_id": 3, "k": 5}]
    requests = [engine.models.RecommendRequest.model_validate(body) for body in bodies]
    alone = [ids_and_scores(engine.recommend(req, reveal_history=True)) for req in requests]
    reads, commits = engine.feature_reads, engine.request_log.commits
    answers = engine.recommend_many([(req, True) for req in requests])
    assert engine.feature_reads - reads == 1 and engine.request_log.commits - commits == 1
    assert [ids_and_scores(answer) for answer in answers] == alone
    assert [a.cold_start for a in answers] == [False, False, True, False, False, False]
    assert not any(a.degraded for a in answers)
    logged = set(engine.request_log.requests_frame().request_id)
    assert {a.request_id for a in answers} <= logged and len({a.request_id for a in answers}) == len(answers)

    refused = engine.models.RecommendRequest.model_validate({"user_id": 7, "k": 2})
    original = engine.request_log.append_request_group
    engine.request_log.append_request_group = lambda records: [  # a log that takes every record but user 7's
        RequestLogError("not logged") if r.user_id == 7 else None for r in records]
    try:
        answers = engine.recommend_many([(requests[0], True), (refused, True), (requests[1], True)])
    finally:
        engine.request_log.append_request_group = original
    assert isinstance(answers[1], RequestLogError)
    assert ids_and_scores(answers[0]) == alone[0] and ids_and_scores(answers[2]) == alone[1]


def test_string_user_ids_go_through_the_id_map(world, tmp_path):
    """A data set with string user ids (the second id shape): requests, answers and the log speak the external id,
    the store and the model its key; an id the map does not hold yet is a cold start without a look-up."""
    config = copy.deepcopy(world.config)
    config.dataset = config.dataset.model_copy(update={"user_id": IdColumn(column="user_id", type="string")})
    config.data.id_maps_dir = tmp_path / "id_maps"
    config.serving.request_log = tmp_path / "request_log.sqlite"
    users = IdMap.empty("user", "string").extended(pd.Series([f"u-{u:02d}" for u in range(1, 31)]))
    save_id_maps(config.data.id_maps_dir, {"user": users, "item": IdMap.empty("item", "int")})
    engine, _ = world.engine(config=config)
    try:
        history, profile = world.user_state(3)  # key 3 is "u-03": the map's keys follow the sorted ids
        response = ask(engine, user_id="u-03", k=5)
        assert response.user_id == "u-03" and not response.cold_start and not response.degraded
        assert ids_and_scores(response)[0] == world.expected(1, history, profile, history, 5)[0].tolist()
        unknown = ask(engine, user_id="u-99", k=5, profile={"age": 30, "gender": "F", "occupation": "doctor"})
        assert unknown.cold_start and not unknown.degraded
        event = engine.interaction(engine.models.InteractionRequest.model_validate(
            {"user_id": "u-99", "item_id": int(history[0])}), reveal_history=True)
        assert event.logged and not event.pushed and "user_id 'u-99' is not in the id map yet" in event.reason
        logged = engine.request_log.requests_frame()
        assert set(logged.user_id) == {"u-03", "u-99"}
        with pytest.raises(ValidationError, match="user_id"):
            engine.models.RecommendRequest.model_validate({"user_id": 3})
    finally:
        engine.close()


@pytest.mark.parametrize(("err", "outage"), [
    (TritonClientError("recommender", "StatusCode.UNAVAILABLE", "connection refused"), True),
    (TritonClientError("recommender", "StatusCode.DEADLINE_EXCEEDED", "deadline"), True),
    (TritonClientError("recommender", "NOT_FOUND", "version 3 is not served"), True),
    (TritonClientError("recommender", "StatusCode.INVALID_ARGUMENT", "bad shape"), False),
    (ValueError("a value of one request"), False),
    (KeyError("user_age"), False),
    (ConnectionError("refused"), True),
    (TimeoutError("no answer"), True),
])
def test_only_outages_trip_a_breaker(err, outage):
    assert dependency_down(err) is outage


def test_an_engine_without_feature_tables_names_the_folder(world, tmp_path):
    config = copy.deepcopy(world.config)
    config.features.data_dir = tmp_path / "nowhere"
    with pytest.raises(ServiceError, match=r"cannot read the item tables in .*nowhere.*recsys features"):
        Engine(config, new_scorer=lambda: ReferenceScorer({}), watch=False)


@pytest.mark.parametrize(("body", "field"), [({"user_id": 1, "k": 0}, "k"), ({"k": 5}, "user_id"),
                                             ({"user_id": 1, "filters": {"genre": ["Drama"]}}, "genre"),
                                             ({"user_id": 1, "profile": {"age": -3}}, "age")])
def test_malformed_requests_are_refused_naming_the_field(engine, body, field):
    with pytest.raises(ValidationError, match=field):
        engine.models.RecommendRequest.model_validate(body)
