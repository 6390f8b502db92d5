"""Triton Python model `recommender_graph`: the retrieval graph (user tower -> scores -> mask -> TopK) run by
ONNX Runtime (1 intra-op thread), one hop per request instead of the ensemble's three. Triton's dynamic batcher
hands over several requests per call (ragged: each keeps its own [1, n] inputs); each runs the graph once, and the
stub's per-call cost is shared by the batch."""

import importlib.util
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUTS = ("history_item_ids", "profile", "exclude_item_ids", "k", "prior_item_ids", "prior_counts")


def _load_ops(version_dir):
    name = f"bundle_ops_{abs(hash(version_dir))}"
    spec = importlib.util.spec_from_file_location(name, os.path.join(version_dir, "bundle_ops.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.ops = _load_ops(version_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(os.path.join(version_dir, "model.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feeds = {name: np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name)) for name in INPUTS}
                if int(feeds["k"].reshape(-1)[0]) < 1:
                    raise ValueError("k must be at least 1")
                ids, scores = self.session.run(["item_ids", "scores"], feeds)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[self.ops.to_triton(pb_utils, "item_ids", ids, np.int64),
                                    self.ops.to_triton(pb_utils, "scores", scores, np.float32)]))
            except Exception as err:  # noqa: BLE001 - report, keep serving
                error = pb_utils.TritonError(f"recommender_graph: {err}")
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses
