"""A large-catalogue deployment on a real Triton server: the top-K step searches the HNSW item index."""

import json

import numpy as np
import pytest

from components.ann import ANN_FILE, ANN_META_FILE
from components.ensemble import EnsembleReference
from serving import deploy
from serving import triton_repo as tr
from serving.triton_client import RecommenderClient

pytestmark = pytest.mark.integration


def test_top_k_searches_the_item_index_and_answers_like_the_exact_reference(triton, bundles):
    config, _ = triton
    config = config.model_copy(update={"serving": config.serving.model_copy(update={"ann_min_items": 0})})
    result = deploy.deploy_bundle(config, bundles["a"])
    assert result.status == "active"
    version = config.serving.model_repository / tr.TOPK / str(result.version)
    assert (version / ANN_FILE).is_file() and (version / ANN_META_FILE).is_file()
    meta = json.loads((version / ANN_META_FILE).read_text(encoding="utf-8"))
    assert meta["calibration"]["queries"] > 300 and meta["calibration"]["chosen"]["recall@10"] >= 0.95  # own users
    log = config.serving.triton_log_file.read_text(encoding="utf-8", errors="replace")
    assert f"top-K over 300 items: HNSW item index, ef_search {meta['ef_search']}, exact below" in log
    reference = EnsembleReference(bundles["a"])  # exact top-K in process
    ids_all = np.load(bundles["a"] / "item_ids.npy")
    rng = np.random.default_rng(3)
    s = config.serving
    with RecommenderClient(f"{s.host}:{s.triton_grpc_port}", timeout_s=10, retries=2) as client:
        for n in (0, 3, 12):
            history = rng.choice(ids_all, size=n, replace=False).tolist()
            exclude = history[:2]
            got = client.recommend(history, [1, 1, 1], exclude, 10)
            want = reference.recommend(history, [1, 1, 1], exclude, 10)
            assert not set(got[0].tolist()) & set(exclude)
            np.testing.assert_array_equal(got[0], want[0])  # 300 items: the graph search finds the exact top 10
            np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)


def test_small_catalogues_get_no_index(tmp_path, bundles):
    version = tr.write_version(bundles["a"], tmp_path / "models", tr.RepoSettings(ann_min_items=10_000))
    assert not (tmp_path / "models" / tr.TOPK / str(version) / ANN_FILE).exists()


def test_the_smoke_check_of_an_ann_version_asks_for_recall_and_exact_scores():
    """A version whose top-K searches the ANN index passes its smoke requests with ANN_SMOKE_MIN_RECALL of the
    exact items at their exact scores, best first (at 10^5 items the index may return a near item in the last
    places, which the exact-equality check refused)."""
    want_ids, want_scores = np.arange(10), np.linspace(1.0, 0.1, 10)
    near = want_ids.copy()
    near[-1] = 99  # one of ten replaced by an item just below the exact list
    scores = want_scores.copy()
    scores[-1] = 0.09
    assert deploy._close_ranking(near, scores, want_ids, want_scores, 0.8) is None
    assert deploy._same_ranking(near, scores, want_ids, want_scores) is not None  # the exact check refuses it
    far = want_ids.copy()
    far[5:] = np.arange(90, 95)
    assert "recall 0.50" in deploy._close_ranking(far, want_scores, want_ids, want_scores, 0.8)
    wrong = want_scores.copy()
    wrong[2] += 0.05
    assert "item 2 scored" in deploy._close_ranking(want_ids, wrong, want_ids, want_scores, 0.8)
    assert "best first" in deploy._close_ranking(want_ids[::-1], want_scores[::-1], want_ids, want_scores, 0.8)
