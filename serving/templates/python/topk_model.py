"""Triton Python model `recommender_topk`: user embedding -> best-first item ids and scores, exclusions removed."""

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
        self.index = self.ops.ItemIndex(np.load(os.path.join(version_dir, "item_ids.npy")))
        self.embeddings = np.ascontiguousarray(np.load(os.path.join(version_dir, "item_embeddings.npy")), np.float32)
        with open(os.path.join(version_dir, "manifest.json"), encoding="utf-8") as fh:
            self.prior = self.ops.PopularityPrior(self.index, json.load(fh).get(self.ops.PRIOR_KEY))
        meta_path = os.path.join(version_dir, "item_index.json")  # written with the ANN index at deploy time
        ef_search, self.exact_below = 64, None
        if os.path.isfile(meta_path):
            with open(meta_path) as meta:
                params = json.load(meta)
            ef_search, self.exact_below = params["ef_search"], params.get("exact_below")
        self.ann = self.ops.load_ann(os.path.join(version_dir, "item_index.faiss"), ef_search)
        search = (f"HNSW item index, ef_search {ef_search}, exact below score {self.exact_below}"
                  if self.ann is not None else "exact scan")
        pb_utils.Logger.log_info(f"top-K over {len(self.embeddings)} items: {search}")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                user = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "user_embedding"))
                exclude = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "exclude_item_ids"))
                k = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "k")).reshape(-1)
                if k.size != 1:
                    raise self.ops.RequestError(f"k must hold exactly one value, got {k.size}")
                prior_ids = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "prior_item_ids"))
                prior_counts = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "prior_counts"))
                boost = self.prior.boost(self.index, prior_ids, prior_counts)
                if self.ann is not None and boost is None:  # the index ranks by dot product alone
                    ids, scores = self.ops.ann_top_k(self.ann, self.index, self.embeddings, user, exclude, int(k[0]),
                                                      self.exact_below)
                else:
                    ids, scores = self.ops.request_top_k(self.index, self.embeddings, user, exclude, int(k[0]), boost)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            self.ops.to_triton(pb_utils, "item_ids", ids, np.int64),
                            self.ops.to_triton(pb_utils, "scores", scores, np.float32),
                        ]
                    )
                )
            except self.ops.RequestError as err:
                responses.append(pb_utils.InferenceResponse(error=_error(f"recommender_topk: {err}")))
            except Exception as err:  # noqa: BLE001 - report, keep serving
                responses.append(pb_utils.InferenceResponse(error=_error(f"recommender_topk failed: {err!r}", False)))
        return responses
