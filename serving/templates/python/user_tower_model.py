"""Triton Python model `recommender_user_tower`: the ONNX user tower run by ONNX Runtime (1 intra-op thread).

Dynamic batching hands several requests to one execute(): they run as one ORT batch and are split back.
"""

import importlib.util
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


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
        path = os.path.join(version_dir, "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        histories = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, "history")) for r in requests]
        profiles = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, "profile")) for r in requests]
        try:
            (embeddings,) = self.session.run(
                ["user_embedding"], {"history": np.concatenate(histories), "profile": np.concatenate(profiles)}
            )
        except Exception as err:  # noqa: BLE001 - every request of the batch gets the error
            error = pb_utils.TritonError(f"recommender_user_tower failed: {err!r}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for history in histories:
            stop = start + history.shape[0]
            out = self.ops.to_triton(pb_utils, "user_embedding", embeddings[start:stop], np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start = stop
        return responses
