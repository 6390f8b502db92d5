"""The whole retrieval of one request as ONE ONNX graph: the `recommender` ensemble's prep -> user tower -> top-K
(plus the popularity prior) without Python, for Triton's native ONNX Runtime / TensorRT backends.

Inputs and outputs are the ensemble's (history_item_ids, profile, exclude_item_ids, k, prior_item_ids,
prior_counts -> item_ids, scores), each with a leading dimension of 1: one request is a batch of one, so Triton's
dynamic batcher can hand the Python backend many ragged requests per call (and the native backend serves the same
shapes with `max_batch_size: 0`). Inside: item ids -> catalogue rows by a LabelEncoder (unknown ids dropped), the
latest max_seq_len rows left-padded, profile values outside their vocabulary read as 0, the bundle's user tower,
dot products with the item table plus the prior (w * log(1 + n), the never-seen bonus, the new-item offset),
excluded items masked to -inf, TopK (ties: lower catalogue row first, as `components.bundle_ops.top_k`), masked
results dropped. Verified against `components.ensemble.EnsembleReference` (same ids, scores within 1e-5) before it
is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from components.bundle_ops import PRIOR_KEY, ItemIndex, PopularityPrior, profile_sizes
from components.errors import RecsysError
from components.schemas import read_bundle

log = logging.getLogger(__name__)

GRAPH_FILE = "retrieval.onnx"
INPUTS = ("history_item_ids", "profile", "exclude_item_ids", "k", "prior_item_ids", "prior_counts")
OUTPUTS = ("item_ids", "scores")
_ML_DOMAIN = "ai.onnx.ml"
_PREFIX = "tower/"  # the user tower's names inside the combined graph


class GraphError(RecsysError, RuntimeError):
    """The retrieval graph cannot be built or differs from the reference; the message says how."""


def _tower_graph(path: Path, history: str, profile: str, user: str):
    """The user tower's nodes and initializers, every name prefixed, its inputs and output renamed."""
    import onnx

    model = onnx.load(str(path))
    rename = {model.graph.input[0].name: history, model.graph.input[1].name: profile,
              model.graph.output[0].name: user}
    names = {i.name for i in model.graph.input}

    def new(name: str) -> str:
        if not name:
            return name
        return rename.get(name) or (name if name in names else _PREFIX + name)

    for node in model.graph.node:
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
        node.name = _PREFIX + node.name
    for init in model.graph.initializer:
        init.name = new(init.name)
    for info in model.graph.value_info:
        info.name = new(info.name)
    return model


def build_graph(bundle_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the retrieval graph of a serving bundle (default `<bundle>/retrieval.onnx`), verified."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bundle = Path(bundle_dir)
    manifest, item_ids, embeddings = read_bundle(bundle, optional=("smoke.json",))
    out = Path(out_path) if out_path else bundle / GRAPH_FILE
    item_ids = np.asarray(item_ids, np.int64)
    table = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, length = len(item_ids), int(manifest["max_seq_len"])
    index = ItemIndex(item_ids)
    prior = PopularityPrior(index, manifest.get(PRIOR_KEY))
    tower = _tower_graph(bundle / "user_tower.onnx", "history_rows", "profile_index", "user_embedding")
    const = {
        "item_ids_table": item_ids, "item_table": table, "prior_weights": prior.weights.astype(np.float32),
        "sizes": np.asarray(profile_sizes(manifest), np.int64), "zero_i": np.array(0, np.int64),
        "minus_one": np.array(-1, np.int64), "one_i": np.array([1], np.int64), "one_f": np.array(1.0, np.float32),
        "len_v": np.array([length], np.int64), "neg_len": np.array([-length], np.int64),
        "big": np.array([np.iinfo(np.int64).max], np.int64), "axis0": np.array([0], np.int64),
        "hist_shape": np.array([1, length], np.int64), "prof_shape": np.array([1, -1], np.int64),
        "col_shape": np.array([-1, 1], np.int64), "flat": np.array([-1], np.int64), "n_v": np.array([n], np.int64),
        "prior_base": prior.base, "prior_offsets": prior.offsets, "neg_inf_1": np.array([-np.inf], np.float32),
        "neg_inf": np.array(-np.inf, np.float32),
    }
    nodes = []

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> None:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"retrieval/{outputs[0]}", domain=domain, **attrs))

    def rows_of(ids: str, out: str) -> None:
        """Catalogue rows of an id vector, -1 where unknown."""
        node("LabelEncoder", [ids], [out], domain=_ML_DOMAIN, keys_int64s=item_ids.tolist(),
             values_int64s=list(range(n)), default_int64=-1)

    for name in INPUTS:  # [1, n] -> [n]
        node("Reshape", [name, "flat"], [f"{name}_flat"])
    # prep: known history rows + 1, the latest max_seq_len, left-padded with 0
    rows_of("history_item_ids_flat", "h_rows")
    node("Greater", ["h_rows", "minus_one"], ["h_known"])
    node("Compress", ["h_rows", "h_known"], ["h_kept"], axis=0)
    node("Add", ["h_kept", "one_i"], ["h_plus"])
    node("Slice", ["h_plus", "neg_len", "big", "axis0"], ["h_last"])
    node("Shape", ["h_last"], ["h_n"])
    node("Sub", ["len_v", "h_n"], ["h_pad_left"])
    node("Concat", ["h_pad_left", "zero_i_1"], ["h_pads"], axis=0)
    node("Pad", ["h_last", "h_pads"], ["h_padded"])
    node("Reshape", ["h_padded", "hist_shape"], ["history_rows"])
    # profile: values outside [0, size) -> 0
    node("Less", ["profile_flat", "sizes"], ["p_below"])
    node("GreaterOrEqual", ["profile_flat", "zero_i"], ["p_above"])
    node("And", ["p_below", "p_above"], ["p_ok"])
    node("Where", ["p_ok", "profile_flat", "zero_i"], ["p_clipped"])
    node("Reshape", ["p_clipped", "prof_shape"], ["profile_index"])
    # (the user tower's nodes go here: history_rows, profile_index -> user_embedding)
    tail_start = len(nodes)
    node("Reshape", ["user_embedding", "col_shape"], ["user_col"])
    node("MatMul", ["item_table", "user_col"], ["dots_col"])
    node("Reshape", ["dots_col", "flat"], ["dots"])
    # prior: w * log(1 + n) + the new-item offset at the given items' rows (ids outside the catalogue ignored),
    # the never-seen bonus + offset of the new items left out elsewhere (`PopularityPrior.boost`)
    rows_of("prior_item_ids_flat", "pr_rows")
    node("Greater", ["pr_rows", "minus_one"], ["pr_known"])
    node("Compress", ["pr_rows", "pr_known"], ["pr_kept"], axis=0)
    node("Compress", ["prior_counts_flat", "pr_known"], ["pr_counts"], axis=0)
    node("Add", ["pr_counts", "one_f"], ["pr_counts1"])
    node("Log", ["pr_counts1"], ["pr_log"])
    node("Gather", ["prior_weights", "pr_kept"], ["pr_w"], axis=0)
    node("Mul", ["pr_w", "pr_log"], ["pr_weighted"])
    node("Gather", ["prior_offsets", "pr_kept"], ["pr_offset"], axis=0)
    node("Add", ["pr_weighted", "pr_offset"], ["pr_boost"])
    node("ScatterElements", ["prior_base", "pr_kept", "pr_boost"], ["boost"], axis=0)  # listed rows replace it
    node("Add", ["dots", "boost"], ["boosted"])
    # exclusions -> -inf
    rows_of("exclude_item_ids_flat", "x_rows")
    node("Greater", ["x_rows", "minus_one"], ["x_known"])
    node("Compress", ["x_rows", "x_known"], ["x_kept"], axis=0)
    node("Shape", ["x_kept"], ["x_n"])
    node("Expand", ["neg_inf_1", "x_n"], ["x_vals"])
    node("ScatterElements", ["boosted", "x_kept", "x_vals"], ["masked"], axis=0)
    # top-k, best first, masked items dropped
    node("Cast", ["k_flat"], ["k64"], to=TensorProto.INT64)
    node("Min", ["k64", "n_v"], ["k_eff"])
    node("TopK", ["masked", "k_eff"], ["top_scores", "top_rows"], axis=0, largest=1, sorted=1)
    node("Greater", ["top_scores", "neg_inf"], ["top_live"])
    node("Compress", ["top_scores", "top_live"], ["live_scores"], axis=0)
    node("Compress", ["top_rows", "top_live"], ["live_rows"], axis=0)
    node("Gather", ["item_ids_table", "live_rows"], ["live_ids"], axis=0)
    node("Unsqueeze", ["live_scores", "axis0"], ["scores"])  # [k] -> [1, k]
    node("Unsqueeze", ["live_ids", "axis0"], ["item_ids"])
    const["zero_i_1"] = np.array([0], np.int64)
    all_nodes = nodes[:tail_start] + list(tower.graph.node) + nodes[tail_start:]
    inputs = [helper.make_tensor_value_info("history_item_ids", TensorProto.INT64, [1, -1]),
              helper.make_tensor_value_info("profile", TensorProto.INT64, [1, len(manifest["profile_fields"])]),
              helper.make_tensor_value_info("exclude_item_ids", TensorProto.INT64, [1, -1]),
              helper.make_tensor_value_info("k", TensorProto.INT32, [1, 1]),
              helper.make_tensor_value_info("prior_item_ids", TensorProto.INT64, [1, -1]),
              helper.make_tensor_value_info("prior_counts", TensorProto.FLOAT, [1, -1])]
    outputs = [helper.make_tensor_value_info("item_ids", TensorProto.INT64, [1, -1]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, -1])]
    initializers = list(tower.graph.initializer) + [numpy_helper.from_array(v, k) for k, v in const.items()]
    graph = helper.make_graph(all_nodes, "retrieval", inputs, outputs, initializers)
    opsets = {o.domain: o.version for o in tower.opset_import}
    opsets[""] = max(opsets.get("", 17), 17)
    opsets[_ML_DOMAIN] = max(opsets.get(_ML_DOMAIN, 2), 2)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              functions=list(tower.functions))
    model.ir_version = tower.ir_version
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    diff = verify_graph(bundle, out)
    log.info("retrieval graph of %s written to %s (max |graph - reference| score %.2e)", bundle, out, diff)
    return out


def graph_inputs(history: list[int], profile: list[int], exclude: list[int], k: int, prior_item_ids=(),
                 prior_counts=()) -> dict[str, np.ndarray]:
    """The graph's input arrays of one request (each [1, n]: a batch of one)."""
    return as_batch_of_one({"history_item_ids": np.asarray(history, np.int64),
                            "profile": np.asarray(profile, np.int64), "exclude_item_ids": np.asarray(exclude, np.int64),
                            "k": np.array([k], np.int32), "prior_item_ids": np.asarray(prior_item_ids, np.int64),
                            "prior_counts": np.asarray(prior_counts, np.float32)})


def as_batch_of_one(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One request's flat input arrays as the graph takes them: a leading dimension of 1."""
    return {name: array.reshape(1, -1) for name, array in arrays.items()}


def verify_graph(bundle_dir: str | Path, graph_path: str | Path, requests: int = 24, atol: float = 1e-5) -> float:
    """Compare the graph with the in-process ensemble on random requests (unknown ids, exclusions, priors, k
    beyond the catalogue); raise GraphError on any difference in ids, or in scores beyond `atol`."""
    from components.ensemble import EnsembleReference, onnx_session

    reference = EnsembleReference(bundle_dir)
    session = onnx_session(graph_path)
    ids, n = reference.index.item_ids, len(reference.index)
    rng = np.random.default_rng(0)
    worst = 0.0
    for r in range(requests):
        history = rng.choice(ids, size=int(rng.integers(0, 2 * reference.max_seq_len + 1))).tolist()
        if r % 3 == 0:
            history = [-1, int(ids.max()) + 7, *history]
        profile = [int(rng.integers(-1, s + 1)) for s in reference.sizes]
        exclude = history[: int(rng.integers(0, len(history) + 1))]
        prior_ids = rng.choice(ids, size=min(n, int(rng.integers(0, 20))), replace=False)
        counts = rng.integers(1, 50, size=prior_ids.size).astype(np.float32)
        k = int(rng.choice([1, 5, 10, n + 3]))
        want = reference.recommend(history, profile, exclude, k, prior_ids, counts)
        got = [a.reshape(-1) for a in session.run(list(OUTPUTS), graph_inputs(history, profile, exclude, k, prior_ids,
                                                                              counts))]
        if got[0].shape != want[0].shape or not np.array_equal(got[0][_separated(want[1], atol)],
                                                               want[0][_separated(want[1], atol)]):
            raise GraphError(f"{graph_path}: request {r} ranks {got[0][:10].tolist()}, the reference "
                             f"{want[0][:10].tolist()}")
        if got[1].size:
            worst = max(worst, float(np.abs(got[1] - want[1]).max()))
    if worst > atol:
        raise GraphError(f"{graph_path}: scores differ from the reference by {worst:.2e} (> {atol})")
    return worst


def _separated(scores: np.ndarray, atol: float) -> np.ndarray:
    """Positions of a best-first list whose score is more than 2 * atol from both neighbours (rounding cannot
    swap them; near-ties may come in either order)."""
    gaps = np.abs(np.diff(scores)) > 2 * atol
    return np.r_[True, gaps] & np.r_[gaps, True]
