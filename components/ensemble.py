"""The serving ensemble run in process: prep -> user tower -> top-K over a serving bundle (contract C5).

The Triton `recommender` ensemble chains three steps; this class runs the same three with the same
`components.bundle_ops` functions the Triton Python models run, and the user tower with ONNX Runtime. The
compression step writes each bundle's smoke.json with it, and the serving tests compare Triton's answers with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.bundle_ops import (
    PRIOR_KEY,
    ItemIndex,
    PopularityPrior,
    history_tensor,
    profile_sizes,
    profile_tensor,
    request_top_k,
)
from components.schemas import BundleError, read_bundle


def onnx_session(path: str | Path) -> Any:
    """An ONNX Runtime CPU session with one intra-op and one inter-op thread (reproducible, fair timings)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own exception types; name the file
        raise BundleError(f"ONNX Runtime cannot load {path}: {err}") from err


class EnsembleReference:
    """In-process reference of the Triton `recommender` ensemble over a serving bundle (smoke.json not needed)."""

    def __init__(self, bundle_dir: str | Path) -> None:
        self.path = Path(bundle_dir)
        self.manifest, item_ids, embeddings = read_bundle(self.path, optional=("smoke.json",))
        self.max_seq_len = int(self.manifest["max_seq_len"])
        self.sizes = profile_sizes(self.manifest)
        self.index = ItemIndex(np.array(item_ids))  # copies: the bundle folder may be replaced while this lives
        self.embeddings = np.array(embeddings, dtype=np.float32)
        self.prior = PopularityPrior(self.index, self.manifest.get(PRIOR_KEY))
        self.session = onnx_session(self.path / "user_tower.onnx")

    def recommend(self, history_item_ids: list[int], profile: list[int], exclude_item_ids: list[int],
                  k: int, prior_item_ids: list[int] | np.ndarray = (),
                  prior_counts: list[float] | np.ndarray = ()) -> tuple[np.ndarray, np.ndarray]:
        """Best-first (item ids, scores) of one request: unknown and -1 history ids dropped, the latest max_seq_len
        kept, profile values outside their vocabulary read as unknown (0), excluded items left out; items of
        `prior_item_ids` get the bundle's popularity prior of their `prior_counts`."""
        history = history_tensor(self.index, [np.asarray(history_item_ids, np.int64)], self.max_seq_len)
        prof = profile_tensor(np.asarray(profile, np.int64), self.sizes)
        boost = self.prior.boost(self.index, np.asarray(prior_item_ids, np.int64),
                                 np.asarray(prior_counts, np.float32))
        (user,) = self.session.run(["user_embedding"], {"history": history, "profile": prof})
        return request_top_k(self.index, self.embeddings, user, np.asarray(exclude_item_ids, np.int64), k, boost)
