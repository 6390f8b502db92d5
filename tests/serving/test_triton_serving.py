"""The recommender ensemble on a real Triton server: deploy, infer, roll out under load, roll back, errors."""

import json
import threading
import time

import numpy as np
import pytest

from components.ensemble import EnsembleReference
from serving import deploy
from serving.triton_client import RecommenderClient, TritonClientError

pytestmark = pytest.mark.integration


def _client(config) -> RecommenderClient:
    """A client as the API has it: inference, health and metadata, no admin key."""
    s = config.serving
    return RecommenderClient(f"{s.host}:{s.triton_grpc_port}", timeout_s=10, retries=2)


@pytest.fixture(scope="module")
def deployed(triton, bundles):
    """Bundle `a` deployed as version 1."""
    config, _ = triton
    result = deploy.deploy_bundle(config, bundles["a"])
    return config, result


def test_first_deploy_is_live_and_smoke_tested(deployed):
    config, result = deployed
    assert result.status == "active" and result.version == 1 and result.previous is None
    # each smoke request ran on the new version's steps before the switch, then through the ensemble
    assert [s["stage"] for s in result.smoke] == ["steps"] * 3 + ["ensemble"] * 3
    history = deploy.read_history(config.serving.model_repository)
    assert history["active"] == 1
    with _client(config) as client:
        assert client.active_version() == 1
        assert client.model_ready("recommender")


def test_results_equal_in_process_reference(deployed, bundles):
    config, _ = deployed
    reference = EnsembleReference(bundles["a"])
    ids_all = np.load(bundles["a"] / "item_ids.npy")
    rng = np.random.default_rng(7)
    with _client(config) as client:
        for n in (0, 1, 5, 12):  # empty history, short, longer than max_seq_len
            history = rng.choice(ids_all, size=n, replace=False).tolist()
            profile = [int(rng.integers(0, 8)), int(rng.integers(0, 3)), int(rng.integers(0, 6))]
            exclude = history[:2]
            got = client.recommend(history, profile, exclude, 10)
            want = reference.recommend(history, profile, exclude, 10)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
            assert np.all(np.diff(got[1]) <= 0), "scores must be best first"


def test_calls_in_flight_together_get_the_answers_of_calls_one_at_a_time(deployed, bundles):
    """start_recommend: many calls in flight on one channel (the API's batches), each answered as alone; a refused
    call raises from its own result() only."""
    config, _ = deployed
    reference = EnsembleReference(bundles["a"])
    ids_all = np.load(bundles["a"] / "item_ids.npy")
    rng = np.random.default_rng(11)
    asks = [(rng.choice(ids_all, size=n, replace=False).tolist(), [int(rng.integers(0, 3)), 1, 0], k)
            for n, k in zip((0, 3, 7, 12, 2, 5), (10, 3, 7, 1, 4, 10), strict=True)]
    with _client(config) as client:
        pending = [client.start_recommend(history, profile, history[:1], k) for history, profile, k in asks]
        wrong = client.start_recommend([1], [1, 1, 1], [], 3, version=99)  # a version Triton does not serve
        for (history, profile, k), call in zip(asks, pending, strict=True):
            got, want = call.result(), reference.recommend(history, profile, history[:1], k)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
        with pytest.raises(TritonClientError, match="'recommender'.*version 99") as err:
            wrong.result()
        assert err.value.status in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")


def test_exclusion_removes_items(deployed):
    config, _ = deployed
    with _client(config) as client:
        ids, _ = client.recommend([], [1, 1, 1], [], 10)
        ids2, _ = client.recommend([], [1, 1, 1], ids[:5].tolist(), 10)
    assert not set(ids[:5].tolist()) & set(ids2.tolist())
    assert ids2[:5].tolist() == ids[5:10].tolist()


def test_fewer_than_k_candidates(deployed, bundles):
    config, _ = deployed
    ids_all = np.load(bundles["a"] / "item_ids.npy")
    with _client(config) as client:
        ids, scores = client.recommend([], [0, 0, 0], ids_all[3:].tolist(), 10)
        assert sorted(ids.tolist()) == sorted(ids_all[:3].tolist()) and scores.shape == (3,)
        ids, scores = client.recommend([], [0, 0, 0], ids_all.tolist(), 10)
        assert ids.size == 0 and scores.size == 0
        ids, _ = client.recommend([], [0, 0, 0], [], 10_000)
        assert ids.size == ids_all.size


def test_unknown_history_and_padding_are_ignored(deployed, bundles):
    config, _ = deployed
    ids_all = np.load(bundles["a"] / "item_ids.npy")
    known = ids_all[:3].tolist()
    with _client(config) as client:
        clean = client.recommend(known, [2, 1, 3], [], 10)
        noisy = client.recommend([-1, -1, 10**9, known[0], -5, known[1], 10**9 + 1, known[2]], [2, 1, 3], [], 10)
        unknown_only = client.recommend([10**9, 10**9 + 7], [2, 1, 3], [], 10)
        empty = client.recommend([], [2, 1, 3], [], 10)
        out_of_vocab = client.recommend([], [99, -3, 1000], [], 10)
        unknown_profile = client.recommend([], [0, 0, 0], [], 10)
    np.testing.assert_array_equal(clean[0], noisy[0])
    np.testing.assert_array_equal(unknown_only[0], empty[0])
    np.testing.assert_array_equal(out_of_vocab[0], unknown_profile[0])


def test_malformed_requests_get_clear_errors(deployed):
    config, _ = deployed
    with _client(config) as client:
        good = {
            "history_item_ids": np.array([1, 2], np.int64),
            "profile": np.array([1, 1, 1], np.int64),
            "exclude_item_ids": np.array([], np.int64),
            "k": np.array([5], np.int32),
            "prior_item_ids": np.array([], np.int64),
            "prior_counts": np.array([], np.float32),
        }
        with pytest.raises(TritonClientError, match="recommender.*INVALID_ARGUMENT.*data-type"):
            client.infer_raw({**good, "history_item_ids": np.array([1.0, 2.0], np.float32)})
        with pytest.raises(TritonClientError, match="recommender.*INVALID_ARGUMENT.*profile"):
            client.infer_raw({**good, "profile": np.array([1, 1], np.int64)})
        with pytest.raises(TritonClientError, match="INVALID_ARGUMENT.*k must be at least 1"):
            client.infer_raw({**good, "k": np.array([0], np.int32)})
        with pytest.raises(TritonClientError, match="INVALID_ARGUMENT.*prior_item_ids has 1 values, prior_counts 0"):
            client.infer_raw({**good, "prior_item_ids": np.array([1], np.int64)})
        with pytest.raises(TritonClientError, match="INVALID_ARGUMENT"):
            client.infer_raw({key: v for key, v in good.items() if key != "k"})
    with RecommenderClient(client.url, timeout_s=5, model_name="no_such_model") as other:
        with pytest.raises(TritonClientError, match="'no_such_model'.*(NOT_FOUND|UNAVAILABLE)"):
            other.recommend([1], [1, 1, 1], [], 3)
    with _client(config) as client:  # the server still serves after all of that
        assert client.recommend([], [1, 1, 1], [], 3)[0].size == 3


def test_requests_pin_the_version_that_answers(deployed, bundles):
    config, _ = deployed
    reference = EnsembleReference(bundles["a"])
    with _client(config) as client:
        assert client.served_versions() == [1]
        ids, scores = client.recommend([3, 4], [1, 2, 0], [5], 6, version=1)
        want_ids, want_scores = reference.recommend([3, 4], [1, 2, 0], [5], 6)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
        steps = client.recommend_steps([3, 4], [1, 2, 0], [5], 6, version=1)  # the steps one by one, same answer
        np.testing.assert_array_equal(steps[0], ids)
        np.testing.assert_allclose(steps[1], scores, rtol=1e-6, atol=1e-6)
        with pytest.raises(TritonClientError, match="'recommender'.*version 2") as err:  # never another version
            client.recommend([3, 4], [1, 2, 0], [5], 6, version=2)
        assert err.value.status in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")


def test_failed_smoke_test_keeps_the_live_version(deployed, bundles):
    """The broken version fails its smoke test on its own steps: the ensemble never serves it, not for a moment."""
    config, _ = deployed
    stop, served = threading.Event(), set()

    def watch() -> None:
        with _client(config) as client:
            while not stop.is_set():
                served.update(client.served_versions())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with pytest.raises(deploy.DeployError, match=r"rolled back.*smoke request 0 .*\(steps\)") as err:
            deploy.deploy_bundle(config, bundles["broken"])
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert served == {1}, f"the ensemble served versions {served} during the failed deployment"
    assert err.value.result.status == "failed"
    history = deploy.read_history(config.serving.model_repository)
    assert history["active"] == 1 and history["events"][-1]["error"]
    with _client(config) as client:
        assert client.active_version() == 1
        ids, _ = client.recommend([], [1, 1, 1], [], 5)
    assert set(ids.tolist()) <= set(np.load(bundles["a"] / "item_ids.npy").tolist())


def test_rollout_and_rollback_under_load_fail_no_request(deployed, bundles):
    config, _ = deployed
    ids_a = set(np.load(bundles["a"] / "item_ids.npy").tolist())
    ids_b = set(np.load(bundles["b"] / "item_ids.npy").tolist())
    stop, seen, errors = threading.Event(), [], []

    def traffic() -> None:
        with _client(config) as client:
            while not stop.is_set():
                try:
                    ids, _ = client.recommend([], [1, 2, 3], [], 5)
                    seen.append(frozenset(ids.tolist()))
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    errors.append(repr(exc))

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        rolled_out = deploy.deploy_bundle(config, bundles["b"])
        time.sleep(0.5)
        mid = len(seen)
        rolled_back = deploy.rollback(config)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert errors == []
    assert rolled_out.status == "active" and rolled_back.status == "active"
    assert rolled_back.version == 1 and rolled_back.previous == rolled_out.version
    assert any(s <= ids_b and not s <= ids_a for s in seen[:mid]), "version b never answered"
    assert all(s <= ids_a for s in seen[-3:]), "rollback did not bring version a back"
    assert len(seen) > 20
    history = deploy.read_history(config.serving.model_repository)
    assert history["active"] == 1
    assert [e["action"] for e in history["events"]][-2:] == ["deploy", "rollback"]


def test_restart_restores_the_live_version(triton, deployed):
    from serving import triton_server as ts

    config, _ = deployed
    settings = ts.settings_from_config(config)
    with _client(config) as client:
        before = client.recommend([], [1, 1, 1], [], 5)
    triton[1].stop()
    assert not ts.is_ready(settings) and not list(ts.SHM_DIR.glob(f"{settings.shm_prefix}*"))
    triton[1] = ts.start_server(settings)  # same ports, same repository: nothing is loaded yet
    with _client(config) as client:
        assert not client.model_ready("recommender")
        assert deploy.restore_active(config) == 1
        after = client.recommend([], [1, 1, 1], [], 5)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_allclose(before[1], after[1])


def test_unload_makes_requests_fail_clearly(deployed):
    config, _ = deployed
    with deploy._client(config) as client:  # model control: the client with the server's admin key
        client.unload("recommender")
        for _ in range(50):
            if not client.model_ready("recommender"):
                break
            time.sleep(0.1)
        with pytest.raises(TritonClientError, match="'recommender'"):
            client.recommend([], [1, 1, 1], [], 3)
    assert deploy.restore_active(config) == 1
    with _client(config) as client:
        assert client.recommend([], [1, 1, 1], [], 3)[0].size == 3
    status = deploy.status(config)
    assert status["serving_version"] == 1 and status["versions_on_disk"] == [1, 2, 3]
    assert json.loads(json.dumps(status))
