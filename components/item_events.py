"""Per-request item interaction counts for the popularity priors, served from memory.

`components.model.item_event_counts` defines the count (events on an item by other users strictly before the
request time, within the prior's window); this index answers it for one request in time proportional to the
window's events the first time and to the user's own events after that (window totals are cached per time slice).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from components.bundle_ops import ItemIndex, PopularityPrior

US_PER_DAY = 86_400 * 1_000_000
_CACHED_SLICES = 8
_NO_EVENTS = np.zeros(0, np.int64)


def epoch_us(values: object) -> np.ndarray:
    """Timestamps as int64 microseconds since the epoch (UTC)."""
    return pd.to_datetime(pd.Series(values), utc=True).dt.as_unit("us").astype("int64").to_numpy()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def first_event_us(rows: np.ndarray, ts_us: np.ndarray, n: int) -> np.ndarray:
    """int64 [n]: per catalogue row the time of its first event (any user's), the int64 maximum where it has none."""
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, rows, ts_us)
    return first


def days_since(first_us: np.ndarray, as_of_us: np.ndarray | int) -> np.ndarray:
    """float32: days from each first event to as_of (broadcast), 0 where it is not before as_of: an item's age,
    the velocity's denominator (`components.bundle_ops.interactions_per_day`)."""
    return ((as_of_us - np.minimum(first_us, as_of_us)) / US_PER_DAY).astype(np.float32)


def datetime_us(ts: datetime) -> int:
    """One timezone-aware datetime as microseconds since the epoch, exactly (`epoch_us` without pandas: the
    per-request path)."""
    return (ts - _EPOCH) // timedelta(microseconds=1)


class ItemEventIndex:
    """Interactions (user, item, time) sorted by time over one catalogue; `add` appends live events."""

    def __init__(self, index: ItemIndex, events: pd.DataFrame | None = None) -> None:
        self.index = index
        self._lock = threading.Lock()
        self._pending: list[tuple[int, int, int]] = []
        self._ts = np.zeros(0, np.int64)
        self._rows = np.zeros(0, np.int64)
        self._users = np.zeros(0, np.int64)
        self._by_user: dict[int, np.ndarray] = {}
        self._first = first_event_us(_NO_EVENTS, _NO_EVENTS, len(index))
        self._totals: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        if events is not None and len(events):
            self._merge(events["user_id"].to_numpy(np.int64), events["item_id"].to_numpy(np.int64),
                        epoch_us(events["event_timestamp"]))

    def __len__(self) -> int:
        return int(self._ts.size) + len(self._pending)

    def _merge(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> None:
        rows = self.index.rows(items)
        keep = rows >= 0
        ts = np.concatenate([self._ts, ts[keep]])
        rows = np.concatenate([self._rows, rows[keep]])
        users = np.concatenate([self._users, users[keep]])
        order = np.argsort(ts, kind="stable")
        self._ts, self._rows, self._users = ts[order], rows[order], users[order]
        by_user = np.argsort(self._users, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(self._users[by_user]) != 0]) if by_user.size else []
        self._by_user = {int(self._users[by_user[s]]): part
                         for s, part in zip(starts, np.split(by_user, starts[1:]) if by_user.size else [], strict=True)}
        self._first = first_event_us(self._rows, self._ts, len(self.index))  # the velocity's age
        self._totals.clear()

    def add(self, user_id: int, item_id: int, ts_us: int) -> None:
        """One live interaction (counted from the next request on)."""
        with self._lock:
            self._pending.append((int(user_id), int(item_id), int(ts_us)))

    def add_many(self, users: np.ndarray, items: np.ndarray, ts_us: np.ndarray) -> None:
        """Live interactions in bulk (counted from the next request on)."""
        with self._lock:
            self._pending.extend(zip(np.asarray(users, np.int64).tolist(), np.asarray(items, np.int64).tolist(),
                                     np.asarray(ts_us, np.int64).tolist(), strict=True))

    def _flush(self) -> None:
        if self._pending:
            users, items, ts = (np.asarray(c, np.int64) for c in zip(*self._pending, strict=True))
            self._pending = []
            self._merge(users, items, ts)

    def _window(self, user_id: int, as_of_us: int, window_days: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [N] events per catalogue row with time < as_of and >= as_of - window, all users (cached per
        time slice: do not modify); catalogue rows of `user_id`'s own events among them)."""
        with self._lock:
            self._flush()
            hi = int(np.searchsorted(self._ts, as_of_us, side="left"))
            lo = 0 if window_days is None else int(
                np.searchsorted(self._ts, as_of_us - int(window_days * US_PER_DAY), side="left"))
            total = self._totals.get((lo, hi))
            if total is None:
                total = np.bincount(self._rows[lo:hi], minlength=len(self.index)).astype(np.float32)
                self._totals[(lo, hi)] = total
                while len(self._totals) > _CACHED_SLICES:
                    self._totals.popitem(last=False)
            mine = self._by_user.get(int(user_id), _NO_EVENTS)
            rows = self._rows
        return total, rows[mine[(mine >= lo) & (mine < hi)]]

    def counts(self, user_id: int, as_of_us: int, window_days: float | None) -> np.ndarray:
        """float32 [N]: per catalogue row, events by users other than `user_id` with time < as_of (and >= as_of -
        window when a window is given), as `components.model.item_event_counts` counts them."""
        total, mine = self._window(user_id, as_of_us, window_days)
        out = total.copy()
        np.subtract.at(out, mine, 1.0)
        return out

    def ages(self, as_of_us: int) -> np.ndarray:
        """float32 [N]: per catalogue row, days from its first event (any user's) to as_of, 0 where it has none
        before it (as `components.model.ItemEventCounter.ages` counts them)."""
        with self._lock:
            self._flush()
            first = self._first
        return days_since(first, as_of_us)

    def prior_counts(self, prior: PopularityPrior, user_id: int, as_of_us: int) -> tuple[np.ndarray, np.ndarray]:
        """Sparse (item ids, counts) for `PopularityPrior.boost`: each item's effective count over its prior's
        windows and velocity (`PriorPart.effective_counts`); items with none left out, except new items someone
        has met when the new-item prior has a never-seen bonus (the bundle gives the bonus to the new items left
        out)."""
        counts = np.zeros(len(self.index), np.float32)
        listed = np.zeros(len(self.index), bool)
        for part in prior.parts:
            per_window = []
            for days, _ in part.windows:
                total, mine = self._window(user_id, as_of_us, days)
                window = total[part.rows].copy()
                own = mine[part.mask[mine]]
                np.subtract.at(window, np.searchsorted(part.rows, own), 1.0)
                per_window.append(window)
            ages = self.ages(as_of_us)[part.rows] if part.velocity else None
            counts[part.rows] = part.effective_counts(per_window, ages)
            listed[part.rows] = part.seen(per_window) if part.never_seen else counts[part.rows] > 0
        rows = np.flatnonzero(listed)
        return self.index.item_ids[rows], counts[rows]


ITEM_EVENTS_FILE = "item_events.parquet"  # beside the feature tables: the events the API's priors count
EVENT_COLUMNS = ["user_id", "item_id", "event_timestamp"]


def write_item_events(interactions_path: str | Path, out_dir: str | Path) -> Path:
    """The canonical interactions' (user, item, time) columns as `<out_dir>/item_events.parquet`."""
    target = Path(out_dir) / ITEM_EVENTS_FILE
    pd.read_parquet(interactions_path, columns=EVENT_COLUMNS).to_parquet(target, index=False)
    return target


def read_item_events(folder: str | Path) -> pd.DataFrame:
    """The events written by `write_item_events` (an empty frame where there are none)."""
    path = Path(folder) / ITEM_EVENTS_FILE
    if not path.is_file():
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in EVENT_COLUMNS[:2]}
                            | {"event_timestamp": pd.Series(dtype="datetime64[us, UTC]")})
    return pd.read_parquet(path, columns=EVENT_COLUMNS)
