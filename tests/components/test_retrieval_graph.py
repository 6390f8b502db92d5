"""The retrieval as one ONNX graph (components.retrieval_graph) ranks exactly as the in-process three-step
ensemble, for a synthetic tower and for the trained model's exported tower with both popularity priors on."""

import numpy as np
import pytest

from benchmarks.serving_stack import make_bundle
from components.ensemble import EnsembleReference, onnx_session
from components.retrieval_graph import OUTPUTS, GraphError, build_graph, graph_inputs, verify_graph
from tests.serving.prior_bundle import bundle_of, model_with_priors


def test_graph_of_the_trained_model_equals_the_reference(planted_model, tmp_path):
    bundle = bundle_of(model_with_priors(planted_model, tmp_path / "model"), tmp_path / "bundle")
    graph = build_graph(bundle)  # verified on random requests inside
    reference, session = EnsembleReference(bundle), onnx_session(graph)
    ids = reference.index.item_ids
    history, prior_ids = ids[[3, 9, 4]].tolist(), ids[:8]
    counts = np.arange(1, 9, dtype=np.float32)
    want = reference.recommend(history, [1, 1, 1], history, 10, prior_ids, counts)
    got = session.run(list(OUTPUTS), graph_inputs(history, [1, 1, 1], history, 10, prior_ids, counts))
    assert got[0].shape == (1, 10) and got[1].shape == (1, 10)  # a batch of one, as Triton's batcher hands it over
    got = [a[0] for a in got]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)
    assert not set(history) & set(got[0].tolist())
    everything = session.run(list(OUTPUTS), graph_inputs(ids.tolist(), [0, 0, 0], ids[:-2].tolist(), 1000))
    assert sorted(everything[0][0].tolist()) == sorted(ids[-2:].tolist())  # k beyond what is left: the rest


def test_a_graph_that_ranks_differently_is_refused(tmp_path):
    first = make_bundle(tmp_path / "a", n_items=120, dim=8, max_seq_len=4, seed=0)
    other = make_bundle(tmp_path / "b", n_items=120, dim=8, max_seq_len=4, seed=1)
    graph = build_graph(other, tmp_path / "other.onnx")
    with pytest.raises(GraphError, match="request 0 ranks"):
        verify_graph(first, graph)
