"""Triton Python model `recommender_prep`: item ids + profile -> the user tower's fixed-shape inputs."""

import importlib.util
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _load_ops(version_dir):
    name = f"bundle_ops_{abs(hash(version_dir))}"
    spec = importlib.util.spec_from_file_location(name, os.path.join(version_dir, "bundle_ops.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error(message, invalid=True):
    try:
        code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
        return pb_utils.TritonError(message, code)
    except (AttributeError, TypeError):
        return pb_utils.TritonError(message)


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.ops = _load_ops(version_dir)
        with open(os.path.join(version_dir, "manifest.json"), encoding="utf-8") as fh:
            manifest = json.load(fh)
        self.max_seq_len = int(manifest["max_seq_len"])
        self.sizes = self.ops.profile_sizes(manifest)
        self.index = self.ops.ItemIndex(np.load(os.path.join(version_dir, "item_ids.npy")))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                # DLPack both ways: with numpy 2 the backend's as_numpy()/Tensor(name, array) corrupt data
                history = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "history_item_ids"))
                profile = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "profile"))
                hist = self.ops.history_tensor(self.index, [history.reshape(-1)], self.max_seq_len)
                prof = self.ops.profile_tensor(profile, self.sizes)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            self.ops.to_triton(pb_utils, "history", hist, np.int64),
                            self.ops.to_triton(pb_utils, "profile_index", prof, np.int64),
                        ]
                    )
                )
            except self.ops.RequestError as err:
                responses.append(pb_utils.InferenceResponse(error=_error(f"recommender_prep: {err}")))
            except Exception as err:  # noqa: BLE001 - report, keep serving
                responses.append(pb_utils.InferenceResponse(error=_error(f"recommender_prep failed: {err!r}", False)))
        return responses
