"""Pure-numpy serving steps shared by the Triton Python models and the in-process reference.

Copied next to each Triton Python model (it runs inside the backend stub, where the project is not
importable), and loaded by path in-process, so Triton and the reference run the very same code.
"""

import ctypes
from typing import Any

import numpy as np


class RequestError(ValueError):
    """The request itself is malformed (answered as INVALID_ARG)."""


class ItemIndex:
    """Item id <-> catalogue row (row 0 of item_ids.npy is index 0; the tower sees row + 1, 0 = padding)."""

    def __init__(self, item_ids: np.ndarray) -> None:
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self._order = np.argsort(self.item_ids, kind="stable")
        self._sorted = self.item_ids[self._order]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Catalogue rows of `ids`, -1 for ids not in the catalogue (and for -1 padding)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self._sorted.size == 0 or ids.size == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self._sorted, ids), 0, self._sorted.size - 1)
        found = self._sorted[pos] == ids
        return np.where(found, self._order[pos], -1).astype(np.int64)


def history_tensor(index: ItemIndex, history_item_ids: np.ndarray, max_seq_len: int) -> np.ndarray:
    """[1, L] tower input: row + 1 of known items, most recent last, left-padded with 0; unknown ids dropped."""
    rows = index.rows(history_item_ids)
    rows = rows[rows >= 0][-max_seq_len:] + 1
    out = np.zeros((1, max_seq_len), dtype=np.int64)
    if rows.size:
        out[0, max_seq_len - rows.size :] = rows
    return out


def profile_sizes(manifest: dict) -> list[int]:
    """Index range of each profile field of a bundle (its vocabulary + the unknown index 0)."""
    return [len(field["vocab"]) + 1 for field in manifest["profile_encoder"]["fields"]]


def profile_tensor(profile: np.ndarray, sizes: list[int]) -> np.ndarray:
    """[1, P] tower input: vocab indices, anything outside a field's vocabulary becomes 0 (unknown)."""
    profile = np.asarray(profile, dtype=np.int64).reshape(-1)
    if profile.size != len(sizes):
        raise RequestError(f"profile must hold {len(sizes)} values, got {profile.size}")
    limits = np.asarray(sizes, dtype=np.int64)
    return np.where((profile >= 0) & (profile < limits), profile, 0).reshape(1, -1)


def top_k(
    index: ItemIndex, item_embeddings: np.ndarray, user_embedding: np.ndarray, exclude_item_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best-first (item_ids int64 [k'], scores float32 [k']) by dot product, excluded items left out, k' <= k."""
    if k < 1:
        raise RequestError(f"k must be at least 1, got {k}")
    user = np.asarray(user_embedding, dtype=np.float32).reshape(-1)
    if user.size != item_embeddings.shape[1]:
        raise RequestError(f"user embedding has {user.size} values, the item table {item_embeddings.shape[1]}")
    scores = item_embeddings @ user
    allowed = np.ones(scores.shape[0], dtype=bool)
    rows = index.rows(exclude_item_ids)
    allowed[rows[rows >= 0]] = False
    candidates = np.flatnonzero(allowed)
    k = min(int(k), candidates.size)
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    cand_scores = scores[candidates]
    part = np.argpartition(-cand_scores, k - 1)[:k] if k < candidates.size else np.arange(candidates.size)
    # best first; ties broken by catalogue row so Triton and the reference agree exactly
    order = np.lexsort((candidates[part], -cand_scores[part]))
    best = candidates[part][order]
    return index.item_ids[best].copy(), scores[best].astype(np.float32)


def load_ann(path: str, ef_search: int) -> Any:
    """The item ANN index written at deploy time (faiss HNSW, inner product), or None when there is none."""
    import os

    if not os.path.isfile(path):
        return None
    import faiss

    faiss.omp_set_num_threads(1)  # one compute thread per server process
    ann = faiss.read_index(path)
    ann.hnsw.efSearch = int(ef_search)
    return ann


def ann_top_k(
    ann: Any, index: ItemIndex, item_embeddings: np.ndarray, user_embedding: np.ndarray,
    exclude_item_ids: np.ndarray, k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`top_k` through the ANN index: fetch k + |excluded| candidates, drop excluded ones, order them by
    their exact dot product (same tie-break as `top_k`); exact search when too few candidates survive."""
    if k < 1:
        raise RequestError(f"k must be at least 1, got {k}")
    user = np.asarray(user_embedding, dtype=np.float32).reshape(1, -1)
    if user.shape[1] != item_embeddings.shape[1]:
        raise RequestError(f"user embedding has {user.shape[1]} values, the item table {item_embeddings.shape[1]}")
    excluded = index.rows(exclude_item_ids)
    excluded = np.unique(excluded[excluded >= 0])
    want = min(int(k), item_embeddings.shape[0] - excluded.size)
    if want <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    fetch = min(item_embeddings.shape[0], int(k) + excluded.size)
    _, rows = ann.search(user, fetch)
    rows = rows[0][rows[0] >= 0]
    rows = rows[~np.isin(rows, excluded)]
    if rows.size < want:  # the graph ran out of candidates: exact is cheap compared with a wrong answer
        return top_k(index, item_embeddings, user, exclude_item_ids, k)
    scores = item_embeddings[rows] @ user[0]
    order = np.lexsort((rows, -scores))[:want]
    best = rows[order]
    return index.item_ids[best].copy(), scores[order].astype(np.float32)


_USED_NAME = ctypes.c_char_p(b"used_dltensor")  # kept alive: the capsule keeps pointing at it
_SET_NAME = ctypes.pythonapi.PyCapsule_SetName
_SET_NAME.argtypes = [ctypes.py_object, ctypes.c_char_p]
_SET_NAME.restype = ctypes.c_int


def to_triton(pb_utils: Any, name: str, array: np.ndarray, dtype: Any) -> Any:
    """pb_utils.Tensor from a fresh contiguous array through DLPack (numpy 2 safe).

    The backend stub consumes the capsule and renames it 'used_dlpack', which numpy's capsule destructor
    does not know ('used_dltensor') and reports as an error on every call; renaming it the numpy way makes
    the destructor a no-op, while the stub still releases the tensor through its deleter.
    """
    capsule = np.array(array, dtype=dtype, copy=True, order="C").__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _SET_NAME(capsule, _USED_NAME.value)
    return tensor
