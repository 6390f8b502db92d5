"""Durable, append-only log of served requests and of the interactions that followed (contract C6).

SQLite in WAL mode with ``synchronous=FULL``: every append is committed (and on disk) before the call returns,
so a process killed right after an append loses nothing. One writer connection per ``RequestLog`` guarded by a
lock (thread-safe); readers open their own connection and return DataFrames.

Group commit: concurrent ``append_request`` callers are coalesced. Each caller queues its rows and takes the
writer lock; whoever holds it commits every queued request in one transaction (one fsync) and marks them done,
so a caller that gets the lock later finds its own entry already committed and returns at once. Every caller
still returns only after the transaction holding its own entry has committed.
Timestamps are stored as integer microseconds since the epoch (UTC) so windows are cheap range scans.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.errors import RecsysError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    user_id NOT NULL,  -- external ids: integers or text (no type affinity keeps '00123' a string)
    k INTEGER NOT NULL,
    exclude_seen INTEGER NOT NULL,
    filters TEXT NOT NULL,
    profile TEXT NOT NULL,
    item_ids TEXT NOT NULL,
    scores TEXT NOT NULL,
    model_version TEXT NOT NULL,
    degraded INTEGER NOT NULL,
    cold_start INTEGER NOT NULL,
    latency_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts_us);
CREATE TABLE IF NOT EXISTS recommendations (
    request_id TEXT NOT NULL REFERENCES requests (request_id),
    rank INTEGER NOT NULL,
    item_id NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (request_id, rank)
);
CREATE TABLE IF NOT EXISTS interactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id NOT NULL,
    item_id NOT NULL,
    rating REAL,
    ts_us INTEGER NOT NULL,
    logged_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS interactions_ts ON interactions (ts_us);
"""


class RequestLogError(RecsysError, ValueError):
    """A record cannot be logged or the log cannot be read; the message says which field or file."""


@dataclass
class RequestRecord:
    """One served recommendation request and its response."""

    request_id: str
    ts: datetime
    user_id: int | str  # the data set's external ids
    k: int
    exclude_seen: bool
    filters: dict[str, Any]
    profile: dict[str, Any]
    item_ids: list[int | str]
    scores: list[float]
    model_version: str
    degraded: bool
    cold_start: bool
    latency_ms: float


@dataclass
class _Pending:
    """A request waiting for a group commit; `done` once a transaction holding it committed or failed."""

    request_id: str
    row: tuple
    recs: list[tuple]
    done: bool = False
    error: RequestLogError | None = None


def _to_us(ts: datetime | pd.Timestamp | str, what: str) -> int:
    """UTC microseconds since the epoch; naive timestamps are refused (the log is UTC only)."""
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        raise RequestLogError(f"{what}: timestamp {ts!r} has no time zone; pass an aware UTC datetime")
    return int(stamp.tz_convert("UTC").value // 1000)


def _bound_us(value: datetime | pd.Timestamp | str | None, what: str) -> int | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:  # window bounds given without zone are read as UTC
        stamp = stamp.tz_localize("UTC")
    return _to_us(stamp, what)


def _external_id(value: Any, where: str) -> int | str:
    """An external id as logged: an integer or a non-empty string (bools and other types refused)."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, str) and value:
        return value
    raise RequestLogError(f"{where}: an id must be an integer or a non-empty string, got {value!r}")


def _ids(series: pd.Series) -> pd.Series:
    """Logged external ids: int64 when every id is an integer, else strings."""
    if series.map(lambda v: isinstance(v, int | np.integer)).all():
        return series.astype("int64")
    return series.astype(str)


def _us_to_ts(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series.astype("int64"), unit="us", utc=True).astype("datetime64[us, UTC]")


class RequestLog:
    """The request/response and interaction log in one SQLite file (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
            with self._conn:
                self._conn.executescript(_SCHEMA)
        except sqlite3.Error as err:
            raise RequestLogError(f"cannot open request log {self.path}: {err}") from err
        self._lock = threading.Lock()  # the writer connection
        self._queue_lock = threading.Lock()  # the queue of requests waiting for a group commit
        self._queue: list[_Pending] = []
        self.commits = 0  # transactions committed by append_request (group commits); for tests and benchmarks

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ----------------------------------------------------------------------------------------
    def _write(self, statements: list[tuple[str, Any]], where: str) -> None:
        with self._lock:
            self._write_locked(statements, where)

    def _write_locked(self, statements: list[tuple[str, Any]], where: str) -> None:
        """One transaction on the writer connection; the caller holds self._lock."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    if isinstance(params, list):
                        self._conn.executemany(sql, params)
                    else:
                        self._conn.execute(sql, params)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as err:
            raise RequestLogError(f"{where}: {err} (log {self.path})") from err
        except sqlite3.Error as err:
            raise RequestLogError(f"{where}: cannot write to request log {self.path}: {err}") from err

    @staticmethod
    def _request_rows(record: RequestRecord) -> tuple[tuple, list[tuple]]:
        where = f"request {record.request_id!r}"
        if len(record.item_ids) != len(record.scores):
            raise RequestLogError(f"{where}: {len(record.item_ids)} item_ids but {len(record.scores)} scores")
        item_ids = [_external_id(i, where) for i in record.item_ids]
        scores = [float(s) for s in record.scores]
        try:
            filters, profile = json.dumps(record.filters, default=str), json.dumps(record.profile, default=str)
        except (TypeError, ValueError) as err:
            raise RequestLogError(f"{where}: filters/profile must be JSON-serialisable: {err}") from err
        row = (record.request_id, _to_us(record.ts, where), _external_id(record.user_id, where), int(record.k),
               int(bool(record.exclude_seen)), filters, profile, json.dumps(item_ids), json.dumps(scores),
               str(record.model_version), int(bool(record.degraded)), int(bool(record.cold_start)),
               float(record.latency_ms))
        recs = [(record.request_id, rank, item, score)
                for rank, (item, score) in enumerate(zip(item_ids, scores, strict=True), 1)]
        return row, recs

    @staticmethod
    def _request_statements(rows: list[tuple], recs: list[tuple]) -> list[tuple[str, Any]]:
        return [("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows),
                ("INSERT INTO recommendations VALUES (?,?,?,?)", recs)]

    def append_request(self, record: RequestRecord) -> None:
        """Log one request and its ranked response; returns once a transaction holding it has committed.

        Concurrent callers are group-committed (one transaction and one fsync for all requests queued while
        the previous commit ran); a record that cannot be written raises here and does not fail the others.
        """
        row, recs = self._request_rows(record)
        entry = _Pending(record.request_id, row, recs)
        with self._queue_lock:
            self._queue.append(entry)
        with self._lock:
            if not entry.done:  # nobody committed it yet: commit everything queued, this entry included
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit_group(batch)
        if entry.error is not None:
            raise entry.error

    def _commit_group(self, batch: list[_Pending]) -> None:
        """Commit queued requests in one transaction (caller holds self._lock); if that fails and the group
        holds several, each is retried alone so only the faulty one gets the error."""
        where = f"request {batch[0].request_id!r}" if len(batch) == 1 else f"{len(batch)} requests"
        try:
            self._write_locked(self._request_statements([e.row for e in batch], [r for e in batch for r in e.recs]),
                               where)
            self.commits += 1
        except RequestLogError as err:
            if len(batch) == 1:
                batch[0].error = err
            else:
                for entry in batch:
                    self._commit_group([entry])
        except BaseException as err:  # e.g. interrupted: the waiting callers must not think they were logged
            for entry in batch:
                entry.error = entry.error or RequestLogError(f"request {entry.request_id!r} not logged: {err!r}")
            raise
        finally:
            for entry in batch:
                entry.done = True

    def append_requests(self, records: list[RequestRecord]) -> int:
        """Log several requests in one committed transaction (all or none); for replays and back-fills."""
        if not records:
            return 0
        rows, recs = [], []
        for record in records:
            row, rec = self._request_rows(record)
            rows.append(row)
            recs += rec
        where = f"request {records[0].request_id!r}" if len(records) == 1 else f"{len(records)} requests"
        self._write(self._request_statements(rows, recs), where)
        return len(rows)

    def append_interaction(self, user_id: int | str, item_id: int | str, rating: float | None,
                           event_timestamp: datetime | pd.Timestamp | str) -> None:
        """Log one user-item interaction (feedback) in one committed transaction."""
        where = f"interaction user {user_id} item {item_id}"
        rating_value = None if rating is None or pd.isna(rating) else float(rating)
        row = (_external_id(user_id, where), _external_id(item_id, where), rating_value, _to_us(event_timestamp, where),
               _to_us(datetime.now(UTC), where))
        self._write([("INSERT INTO interactions (user_id, item_id, rating, ts_us, logged_us) VALUES (?,?,?,?,?)",
                      row)], where)

    def append_interactions(self, frame: pd.DataFrame) -> int:
        """Log many interactions (user_id, item_id, rating, event_timestamp) in one committed transaction."""
        missing = {"user_id", "item_id", "event_timestamp"} - set(frame.columns)
        if missing:
            raise RequestLogError(f"append_interactions: missing column(s) {sorted(missing)}")
        ts = pd.to_datetime(frame["event_timestamp"])
        if ts.dt.tz is None:
            raise RequestLogError("append_interactions: event_timestamp has no time zone; use UTC timestamps")
        now = _to_us(datetime.now(UTC), "append_interactions")
        ratings = frame["rating"] if "rating" in frame.columns else pd.Series([None] * len(frame))
        columns = (frame["user_id"], frame["item_id"], ratings, ts.dt.tz_convert("UTC"))
        where = "append_interactions"
        rows = [(_external_id(u, where), _external_id(i, where), None if r is None or pd.isna(r) else float(r),
                 int(t.value // 1000), now)
                for u, i, r, t in zip(*columns, strict=True)]
        self._write([("INSERT INTO interactions (user_id, item_id, rating, ts_us, logged_us) VALUES (?,?,?,?,?)",
                      rows)], "append_interactions")
        return len(rows)

    # ---- reading ----------------------------------------------------------------------------------------
    def _read(self, sql: str, since: Any, until: Any, column: str) -> pd.DataFrame:
        clauses, params = [], []
        lo, hi = _bound_us(since, "since"), _bound_us(until, "until")
        if lo is not None:
            clauses.append(f"{column} >= ?")
            params.append(lo)
        if hi is not None:
            clauses.append(f"{column} < ?")
            params.append(hi)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        try:
            conn = sqlite3.connect(self.path, timeout=30.0)
            try:
                return pd.read_sql_query(sql, conn, params=params)
            finally:
                conn.close()
        except (sqlite3.Error, pd.errors.DatabaseError) as err:
            raise RequestLogError(f"cannot read request log {self.path}: {err}") from err

    def requests_frame(self, since: Any = None, until: Any = None) -> pd.DataFrame:
        """Requests with since <= ts < until (the logged profile as a dict per request)."""
        df = self._read("SELECT * FROM requests", since, until, "ts_us")
        df = df.sort_values(["ts_us", "request_id"]).reset_index(drop=True)
        out = pd.DataFrame({"request_id": df["request_id"].astype(str), "ts": _us_to_ts(df["ts_us"]),
                            "user_id": _ids(df["user_id"]), "k": df["k"].astype("int64"),
                            "exclude_seen": df["exclude_seen"].astype(bool)})
        out["filters"] = [json.loads(v) for v in df["filters"]]
        out["profile"] = [json.loads(v) for v in df["profile"]]
        out["item_ids"] = [json.loads(v) for v in df["item_ids"]]
        out["scores"] = [json.loads(v) for v in df["scores"]]
        out["model_version"] = df["model_version"].astype(str).to_numpy()
        for name in ("degraded", "cold_start"):
            out[name] = df[name].astype(bool).to_numpy()
        out["latency_ms"] = df["latency_ms"].astype("float64").to_numpy()
        return out.reset_index(drop=True)

    def recommendations_frame(self, since: Any = None, until: Any = None) -> pd.DataFrame:
        """Long format: request_id, ts, user_id, item_id, rank (1 = best), score, model_version."""
        sql = ("SELECT r.request_id, q.ts_us, q.user_id, r.item_id, r.rank, r.score, q.model_version "
               "FROM recommendations r JOIN requests q ON q.request_id = r.request_id")
        df = self._read(sql, since, until, "q.ts_us")
        df = df.sort_values(["ts_us", "request_id", "rank"]).reset_index(drop=True)
        return pd.DataFrame({
            "request_id": df["request_id"].astype(str), "ts": _us_to_ts(df["ts_us"]),
            "user_id": _ids(df["user_id"]), "item_id": _ids(df["item_id"]),
            "rank": df["rank"].astype("int64"), "score": df["score"].astype("float64"),
            "model_version": df["model_version"].astype(str),
        })

    def interactions_frame(self, since: Any = None, until: Any = None) -> pd.DataFrame:
        """Logged interactions in the canonical shape (user_id, item_id, rating, event_timestamp)."""
        df = self._read("SELECT user_id, item_id, rating, ts_us, seq FROM interactions", since, until, "ts_us")
        df = df.sort_values(["ts_us", "seq"]).reset_index(drop=True)
        return pd.DataFrame({
            "user_id": _ids(df["user_id"]), "item_id": _ids(df["item_id"]),
            "rating": df["rating"].astype("float32"), "event_timestamp": _us_to_ts(df["ts_us"]),
        })
