"""The serving bundle's pure-numpy operations, defined once and run in every runtime.

Training evaluation, the compression checks, batch recommendations, the in-process ensemble reference and the
Triton Python models all call these functions. The module imports nothing of the project (numpy and the standard
library only): the Triton model-repository builder copies this very file next to each Triton Python model, where
it runs inside the backend stub without the project installed.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np


class RequestError(ValueError):
    """The inputs of an operation are malformed (Triton answers INVALID_ARG)."""


class ItemIndex:
    """Item id <-> catalogue row (row r of the item table; the user tower sees row + 1, 0 = padding)."""

    def __init__(self, item_ids: np.ndarray) -> None:
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self._order = np.argsort(self.item_ids, kind="stable")
        self._sorted = self.item_ids[self._order]

    def __len__(self) -> int:
        return int(self.item_ids.size)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Catalogue rows of `ids`, -1 for ids not in the catalogue (and for -1 padding)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self._sorted.size == 0 or ids.size == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self._sorted, ids), 0, self._sorted.size - 1)
        found = self._sorted[pos] == ids
        return np.where(found, self._order[pos], -1).astype(np.int64)


def item_index(catalogue: ItemIndex | np.ndarray) -> ItemIndex:
    """`catalogue` as an ItemIndex (item ids are indexed once; an index is passed through)."""
    return catalogue if isinstance(catalogue, ItemIndex) else ItemIndex(catalogue)


def history_tensor(index: ItemIndex, histories: Sequence[np.ndarray], max_seq_len: int) -> np.ndarray:
    """int64 [len(histories), max_seq_len] user-tower input: catalogue row + 1 of each history's known items,
    most recent last, the latest max_seq_len kept, left-padded with 0; unknown ids (and -1 padding) dropped."""
    out = np.zeros((len(histories), max_seq_len), dtype=np.int64)
    for i, history in enumerate(histories):
        rows = index.rows(history)
        rows = rows[rows >= 0][-max_seq_len:] + 1
        if rows.size:
            out[i, max_seq_len - rows.size :] = rows
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


def exclusion_mask(catalogue: ItemIndex | np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean [len(exclude), len(catalogue)]: True where a user's excluded items sit in the catalogue."""
    index = item_index(catalogue)
    mask = np.zeros((len(exclude), len(index)), dtype=bool)
    lengths = np.fromiter((np.size(e) for e in exclude), dtype=np.int64, count=len(exclude))
    if lengths.sum() == 0:
        return mask
    users = np.repeat(np.arange(len(exclude)), lengths)
    cols = index.rows(np.concatenate([np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude]))
    keep = cols >= 0
    mask[users[keep], cols[keep]] = True
    return mask


def top_k(
    scores: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None, catalogue: ItemIndex | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` items per row of `scores` [U, N] (N = catalogue rows), skipping each user's `exclude` item ids.

    Returns (item_ids int64 [U, min(k, N)], scores float32 [U, min(k, N)]), best first; equal scores keep catalogue
    order. Where a user has fewer than k candidates left, the remaining slots hold item id -1 and score -inf.
    """
    index = item_index(catalogue)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or scores.shape[1] != len(index):
        raise RequestError(f"scores shape {scores.shape} does not match a catalogue of {len(index)} items")
    if k < 1:
        raise RequestError(f"k must be at least 1, got {k}")
    if exclude is not None and len(exclude) != len(scores):
        raise RequestError(f"exclude has {len(exclude)} entries for {len(scores)} users")
    n_users, n_items = scores.shape
    k = min(int(k), n_items)
    masked = scores.copy()
    invalid = np.zeros_like(masked, dtype=bool) if exclude is None else exclusion_mask(index, exclude)
    masked[invalid] = -np.inf
    if n_users == 0:
        return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
    if k < n_items:
        part = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(n_items), (n_users, 1))
    part_scores = np.take_along_axis(masked, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)  # score descending, then catalogue row
    cols = np.take_along_axis(part, order, axis=1)
    out_scores = np.take_along_axis(masked, cols, axis=1)
    item_ids = index.item_ids[cols]
    dead = np.take_along_axis(invalid, cols, axis=1)
    item_ids[dead] = -1
    out_scores[dead] = -np.inf
    return item_ids.astype(np.int64), out_scores.astype(np.float32)


def item_scores(item_embeddings: np.ndarray, user_embedding: np.ndarray) -> np.ndarray:
    """float32 [1, N]: the dot product of one user vector with every row of the item table."""
    user = np.asarray(user_embedding, dtype=np.float32).reshape(-1)
    if user.size != item_embeddings.shape[1]:
        raise RequestError(f"user embedding has {user.size} values, the item table {item_embeddings.shape[1]}")
    return (item_embeddings @ user).reshape(1, -1)


PRIOR_KEY = "popularity_prior"  # the manifest's popularity-prior settings (see `PopularityPrior`)


MIN_AGE_DAYS = 1.0  # an item met less than a day ago counts its interactions per day over one day


def interactions_per_day(count: np.ndarray, age_days: np.ndarray) -> np.ndarray:
    """An item's interactions (by other users, all history) per day since someone first met it: its velocity,
    the age floored at MIN_AGE_DAYS (0 where nobody has met it: its count is 0 too)."""
    return np.asarray(count, np.float64) / np.maximum(np.asarray(age_days, np.float64), MIN_AGE_DAYS)


class PriorPart:
    """One popularity prior: the catalogue rows it covers (and the same as a bool [N] mask), its windows with a
    weight each (days or None = all history), the weight of its velocity (interactions per day since the item was
    first met), the bonus of an item nobody has met yet and the offset every item of the part gets (new items
    only: where they stand against the trained items in one list).
    A plain class: the Triton stub loads this file without registering it as a module, which dataclasses need."""

    def __init__(self, rows: np.ndarray, mask: np.ndarray, windows: tuple[tuple[float | None, float], ...],
                 never_seen: float = 0.0, offset: float = 0.0, velocity: float = 0.0) -> None:
        self.rows, self.mask, self.windows, self.never_seen, self.offset = rows, mask, windows, never_seen, offset
        self.velocity = velocity

    @property
    def weight(self) -> float:
        """w of the served form w * log1p(n): the windows' and the velocity's weights summed."""
        return float(sum(weight for _, weight in self.windows) + self.velocity)

    def effective_counts(self, counts: Sequence[np.ndarray], ages: np.ndarray | None = None) -> np.ndarray:
        """The one count per item a request carries, from its counts in each window (same order as `windows`) and,
        when the part weighs the velocity, the days since each item was first met (`ages`):
        w * log1p(result) = sum of weight_t * log1p(count_t) + velocity * log1p(interactions per day).
        One window and no velocity: its counts as they are."""
        if len(self.windows) == 1 and not self.velocity:
            return np.asarray(counts[0], np.float32)
        logs = sum(weight * np.log1p(np.asarray(c, np.float64))
                   for (_, weight), c in zip(self.windows, counts, strict=True))
        if self.velocity:
            if ages is None:
                raise RequestError("a prior that weighs the velocity needs the items' ages (days since first met)")
            logs = logs + self.velocity * np.log1p(interactions_per_day(counts[self.all_history], ages))
        return np.expm1(logs / max(self.weight, 1e-12)).astype(np.float32)

    def seen(self, counts: Sequence[np.ndarray]) -> np.ndarray:
        """Items met by someone before the request (all-history count > 0): those a request must list when the
        part has a never-seen bonus (the bundle gives it to the new items a request leaves out)."""
        return np.asarray(counts[self.all_history], np.float32) > 0

    @property
    def all_history(self) -> int:
        """Position of the all-history window (present whenever there is a never-seen bonus or a velocity)."""
        return [days for days, _ in self.windows].index(None)

    def dense_boost(self, counts: Sequence[np.ndarray], ages: np.ndarray | None = None) -> np.ndarray:
        """w * log1p(effective count), plus the bonus where nobody has met the item, plus the offset: what the
        bundle's sparse `PopularityPrior.boost` gives these items, computed for every one (batch scoring)."""
        boost = np.float32(self.weight) * np.log1p(self.effective_counts(counts, ages))
        if self.never_seen:
            boost = boost + np.where(self.seen(counts), np.float32(0), np.float32(self.never_seen))
        return (boost + np.float32(self.offset)).astype(np.float32)


class PopularityPrior:
    """The model's popularity priors over a bundle's catalogue: an item scores cosine + w * log1p(n), n = its
    interactions by other users strictly before the request within the prior's window; items without a trained
    ID embedding (`is_new`) use the new-item prior, trained items the other one (weight 0 = off).

    The new-item prior may blend several windows (`new_item_windows`: [[days or None, weight], ...]) and weigh each
    item's velocity (`new_item_velocity`: interactions per day since it was first met): a request then carries one
    effective count per item (`PriorPart.effective_counts`), and w is the weights' sum. With a
    never-seen bonus (`new_item_never_seen`), new items a request leaves out score that bonus: the request lists
    every new item someone has met, even one whose effective count is 0. The new-item offset (`new_item_offset`,
    fitted on the served mix of validation: `components.new_item_prior.fit_new_item_offset`) is added to every new
    item: it places the new items, ranked among themselves by the rest, against the trained ones."""

    def __init__(self, index: ItemIndex, settings: dict | None) -> None:
        settings = settings or {}
        windows = settings.get("new_item_windows")
        if windows is None:
            windows = [[settings.get("new_item_window_days"), float(settings.get("new_item_weight", 0.0))]]
        self.new_item_windows = tuple((None if d is None else float(d), float(w)) for d, w in windows)
        self.new_item_never_seen = float(settings.get("new_item_never_seen", 0.0))
        self.new_item_velocity = float(settings.get("new_item_velocity", 0.0))
        if (self.new_item_never_seen or self.new_item_velocity) and None not in [d for d, _ in self.new_item_windows]:
            self.new_item_windows += ((None, 0.0),)  # the bonus and the velocity need the all-history count
        self.new_item_weight = float(sum(w for _, w in self.new_item_windows) + self.new_item_velocity)
        self.new_item_offset = float(settings.get("new_item_offset", 0.0))
        self.weight = float(settings.get("weight", 0.0))
        self.window_days = settings.get("window_days")
        rows = index.rows(np.asarray(settings.get("new_item_ids", []), dtype=np.int64))
        self.is_new = np.zeros(len(index), dtype=bool)
        self.is_new[rows[rows >= 0]] = True
        self.weights = np.where(self.is_new, np.float32(self.new_item_weight), np.float32(self.weight))
        self.offsets = np.where(self.is_new, np.float32(self.new_item_offset), np.float32(0.0)).astype(np.float32)
        self.base = (np.where(self.is_new, np.float32(self.new_item_never_seen), np.float32(0.0))
                     + self.offsets).astype(np.float32)

    @property
    def active(self) -> bool:
        return self.new_item_weight > 0 or self.new_item_never_seen > 0 or self.weight > 0 or self._offset_on

    @property
    def _offset_on(self) -> bool:
        return bool(self.new_item_offset) and bool(self.is_new.any())

    @functools.cached_property
    def parts(self) -> list[PriorPart]:
        """The priors that are on: the new items' and the trained items'."""
        out = []
        if self.new_item_weight > 0 or self.new_item_never_seen > 0 or self._offset_on:
            out.append(PriorPart(np.flatnonzero(self.is_new), self.is_new.copy(), self.new_item_windows,
                                 self.new_item_never_seen, self.new_item_offset, self.new_item_velocity))
        if self.weight > 0:
            trained = ~self.is_new
            out.append(PriorPart(np.flatnonzero(trained), trained, ((self.window_days, self.weight),)))
        return out

    def boost(self, index: ItemIndex, item_ids: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
        """float32 [N] w * log1p(n) per catalogue row from sparse (item ids, effective counts n), and the
        never-seen bonus on the new items left out, the new-item offset on every new item; None when nothing is
        boosted. Unknown ids are refused (they name an item the bundle does not hold)."""
        item_ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        counts = np.asarray(counts, dtype=np.float32).reshape(-1)
        if item_ids.size != counts.size:
            raise RequestError(f"prior_item_ids has {item_ids.size} values, prior_counts {counts.size}")
        if not self.active or (item_ids.size == 0 and not self.base.any()):
            return None
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise RequestError("prior_counts must be finite and non-negative")
        rows = index.rows(item_ids)
        if np.any(rows < 0):
            raise RequestError(f"prior_item_ids holds ids outside the catalogue, e.g. {int(item_ids[rows < 0][0])}")
        out = self.base.copy()
        out[rows] = self.weights[rows] * np.log1p(counts) + self.offsets[rows]
        return out


def request_top_k(
    index: ItemIndex, item_embeddings: np.ndarray, user_embedding: np.ndarray, exclude_item_ids: np.ndarray, k: int,
    boost: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The top-K step of one request: best-first (item_ids int64 [k'], scores float32 [k']) by dot product over the
    whole item table plus `boost` (float32 [N], the popularity prior), excluded items left out, k' <= k."""
    if k < 1:
        raise RequestError(f"k must be at least 1, got {k}")
    scores = item_scores(item_embeddings, user_embedding)
    if boost is not None:
        scores = scores + boost
    ids, scores = top_k(scores, k, [exclude_item_ids], index)
    keep = ids[0] >= 0
    return ids[0][keep], scores[0][keep]


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
    exclude_item_ids: np.ndarray, k: int, exact_below: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`request_top_k` through the ANN index: fetch k + |excluded| candidates, drop excluded ones, order them by
    their exact dot product (same tie-break as `top_k`); exact search when too few candidates survive, or when
    the best candidate scores below `exact_below` (a query far from every item, where the graph search misses:
    components.ann.calibrate_search)."""
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
    scores = item_embeddings[rows] @ user[0]
    if exact_below is not None and (rows.size == 0 or scores.max() < exact_below):
        return request_top_k(index, item_embeddings, user, exclude_item_ids, k)
    kept = ~np.isin(rows, excluded)
    rows, scores = rows[kept], scores[kept]
    if rows.size < want:  # the graph ran out of candidates: exact is cheap compared with a wrong answer
        return request_top_k(index, item_embeddings, user, exclude_item_ids, k)
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
