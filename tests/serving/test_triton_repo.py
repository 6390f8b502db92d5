"""Model-repository builder, templates and serving ops, without a server."""

import json

import numpy as np
import onnx
import pytest

from components import bundle_ops as ops
from components.ensemble import EnsembleReference
from components.schemas import BundleError
from serving import triton_repo as tr
from serving.triton_client import encode_profile


def test_python_backend_configs(bundles):
    bundle = tr.load_bundle(bundles["a"])
    configs = tr.render_all(bundle, active=2, versions=[1, 2], settings=tr.RepoSettings(tower_instances=2))
    ensemble = tr.parse_config(configs["recommender"])
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 0
    assert [s.model_version for s in ensemble.ensemble_scheduling.step] == [2, 2, 2]
    # the ensemble loads exactly the version its steps are pinned to: ensemble version N runs steps version N
    assert list(ensemble.version_policy.specific.versions) == [2]
    assert {i.name: list(i.dims) for i in ensemble.input} == {
        "history_item_ids": [-1],
        "profile": [3],
        "exclude_item_ids": [-1],
        "k": [1],
        "prior_item_ids": [-1],
        "prior_counts": [-1],
    }
    assert {o.name for o in ensemble.output} == {"item_ids", "scores"}
    tower = tr.parse_config(configs["recommender_user_tower"])
    assert tower.backend == "python" and tower.max_batch_size == 64
    assert tower.dynamic_batching.max_queue_delay_microseconds == 500
    assert tower.instance_group[0].kind == tower.instance_group[0].KIND_CPU and tower.instance_group[0].count == 2
    assert list(tower.version_policy.specific.versions) == [1, 2]


def test_gpu_variant_matches_the_onnx_model(bundles, tmp_path):
    repo = tr.build_cluster_repository(bundles["a"], tmp_path / "cluster")
    tower = tr.parse_config((repo / "recommender_user_tower" / "config.pbtxt").read_text())
    assert tower.platform == "onnxruntime_onnx" and not tower.backend
    group = tower.instance_group[0]
    assert group.kind == group.KIND_GPU and list(group.gpus) == [0]
    assert tower.parameters["intra_op_thread_count"].string_value == "1"
    assert tower.dynamic_batching.preferred_batch_size
    model = onnx.load(str(repo / "recommender_user_tower" / "1" / "model.onnx"))
    onnx_inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim][1:] for i in model.graph.input}
    assert {i.name: list(i.dims) for i in tower.input} == onnx_inputs
    assert [o.name for o in tower.output] == [o.name for o in model.graph.output]
    assert sorted(p.name for p in (repo / "recommender_user_tower" / "1").iterdir()) == ["model.onnx"]
    for model_name in tr.MODELS:
        tr.parse_config((repo / model_name / "config.pbtxt").read_text(), where=model_name)
    # the whole retrieval as one graph on the native backend: no Python model in its folder, its inputs the graph's
    graph = tr.parse_config((repo / tr.GRAPH / "config.pbtxt").read_text())
    assert graph.platform == "onnxruntime_onnx" and not graph.backend and graph.max_batch_size == 0
    assert sorted(p.name for p in (repo / tr.GRAPH / "1").iterdir()) == ["model.onnx"]
    retrieval = onnx.load(str(repo / tr.GRAPH / "1" / "model.onnx"))
    assert [i.name for i in graph.input] == [i.name for i in retrieval.graph.input]
    assert [o.name for o in graph.output] == [o.name for o in retrieval.graph.output] == ["item_ids", "scores"]
    dims = {i.name: [d.dim_value or -1 for d in i.type.tensor_type.shape.dim] for i in retrieval.graph.input}
    assert {i.name: list(i.dims) for i in graph.input} == dims  # whole shapes: a batch of one, declared as such


def test_the_python_graph_is_batched_across_ragged_requests(bundles):
    bundle = tr.load_bundle(bundles["a"])
    settings = tr.RepoSettings(graph=True, graph_max_queue_delay_us=250)
    graph = tr.parse_config(tr.render_config(tr.GRAPH, bundle, 1, [1], settings))
    assert graph.backend == "python" and graph.max_batch_size == settings.max_batch_size
    assert graph.dynamic_batching.max_queue_delay_microseconds == 250
    ragged = {i.name for i in graph.input if i.allow_ragged_batch}
    assert ragged == {"history_item_ids", "exclude_item_ids", "prior_item_ids", "prior_counts"}
    assert {i.name: list(i.dims) for i in graph.input if i.name not in ragged} == {"profile": [3], "k": [1]}


def test_versions_are_written_completely_and_never_overwritten(bundles, tmp_path):
    repo = tmp_path / "repo"
    assert tr.write_version(bundles["a"], repo) == 1
    assert tr.write_version(bundles["b"], repo) == 2
    assert tr.versions_on_disk(repo) == [1, 2]
    assert not list(repo.rglob(".staging-*"))
    for model in tr.MODELS:
        assert (repo / model / "2").is_dir() and (repo / model / "config.pbtxt").is_file()
    assert tr.version_bundle(repo, 2).embedding_dim == 24
    with pytest.raises(tr.RepositoryError, match="already exists"):
        tr.write_version(bundles["a"], repo, version=2)
    on_disk = tr.parse_config((repo / "recommender" / "config.pbtxt").read_text())
    assert on_disk.ensemble_scheduling.step[0].model_version == 1  # configs on disk only change on deploy


def test_bundle_errors_name_the_problem(bundles, tmp_path):
    import shutil

    broken = tmp_path / "b"
    shutil.copytree(bundles["a"], broken)
    (broken / "smoke.json").unlink()
    with pytest.raises(BundleError, match="lacks smoke.json"):
        tr.load_bundle(broken)
    shutil.copy(bundles["a"] / "smoke.json", broken / "smoke.json")
    np.save(broken / "item_embeddings.npy", np.zeros((5, 16), np.float32))
    with pytest.raises(BundleError, match="item_embeddings.npy must be float32 \\[300, D\\]"):
        tr.load_bundle(broken)
    np.save(broken / "item_embeddings.npy", np.zeros((300, 16), np.float64))
    with pytest.raises(BundleError, match="float32"):
        tr.load_bundle(broken)
    with pytest.raises(tr.RepositoryError, match="not a valid Triton model config"):
        tr.parse_config('name: "x" max_batch_size: "many"')


def test_reference_matches_the_independent_torch_expectations(bundles):
    reference = EnsembleReference(bundles["b"])
    for req in json.loads((bundles["b"] / "smoke.json").read_text())["requests"]:
        ids, scores = reference.recommend(req["history_item_ids"], req["profile"], req["exclude_item_ids"], req["k"])
        assert ids.tolist() == req["item_ids"]
        np.testing.assert_allclose(scores, req["scores"], rtol=1e-5, atol=1e-5)


def test_ops_history_profile_and_top_k():
    index = ops.ItemIndex(np.array([30, 10, 20], np.int64))
    np.testing.assert_array_equal(index.rows(np.array([10, 99, -1, 30])), [1, -1, -1, 0])
    np.testing.assert_array_equal(ops.history_tensor(index, [np.array([20, 99, 10, 30])], 2), [[2, 1]])
    np.testing.assert_array_equal(ops.history_tensor(index, [np.array([-1, 20]), np.array([], np.int64)], 4),
                                  [[0, 0, 0, 3], [0, 0, 0, 0]])
    np.testing.assert_array_equal(ops.profile_tensor(np.array([2, 7, -1]), [3, 3, 3]), [[2, 0, 0]])
    with pytest.raises(ops.RequestError, match="3 values"):
        ops.profile_tensor(np.array([1, 1]), [3, 3, 3])
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32)
    ids, scores = ops.request_top_k(index, emb, np.array([1.0, 0.2], np.float32), np.array([30], np.int64), 5)
    assert ids.tolist() == [20, 10] and scores.dtype == np.float32
    np.testing.assert_allclose(scores, [0.6, 0.2])
    with pytest.raises(ops.RequestError, match="k must be at least 1"):
        ops.request_top_k(index, emb, np.ones(2, np.float32), np.array([], np.int64), 0)
    with pytest.raises(ops.RequestError, match="user embedding has 3 values"):
        ops.request_top_k(index, emb, np.ones(3, np.float32), np.array([], np.int64), 2)


def test_encode_profile(bundles):
    manifest = json.loads((bundles["a"] / "manifest.json").read_text())
    def codes(age, gender, occupation):
        return encode_profile(manifest, {"age": age, "gender": gender, "occupation": occupation})

    assert codes(30, "M", "doctor") == [3, 2, 2]  # 25-34 is band 3
    assert codes(17, "F", "student") == [1, 1, 4]
    assert codes(56, "F", "other") == [7, 1, 5]
    assert codes(None, "X", None) == [0, 0, 0]
    assert codes(float("nan"), None, "nobody") == [0, 0, 0]
    assert encode_profile(manifest, {}) == [0, 0, 0]


def test_encode_profile_agrees_with_the_training_code():
    """The API encodes a profile from the manifest exactly as training encoded the users table."""
    import pandas as pd

    from components.config import load_config
    from components.encoders import ProfileEncoder

    users = pd.DataFrame(
        {
            "age": [7, 18, 24, 25, 49, 50, 55, 56, 73, None],
            "gender": ["F", "M", "F", "M", "F", "M", None, "F", "M", "F"],
            "occupation": ["artist", "doctor", "none", "writer", "artist", None, "doctor", "artist", "x", "doctor"],
        }
    )
    encoder = ProfileEncoder.fit(users.iloc[:-2], load_config().dataset)
    manifest = {"profile_fields": encoder.fields, "profile_encoder": encoder.to_dict()}
    want = encoder.encode(users).tolist()
    got = [encode_profile(manifest, {"age": r.age, "gender": r.gender, "occupation": r.occupation})
           for r in users.itertuples()]
    assert got == want and want[8][2] == 0 and want[0][0] != want[1][0]  # 'x' unseen; <18 vs 18-24
