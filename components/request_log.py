"""Durable, append-only log of served requests and of the interactions that followed (contract C6).

One interface, `RequestLog`, two backends chosen by the configured target (`serving.request_log`):
a path is an SQLite file (the embedded default, `SQLiteRequestLog` here), a ``postgresql://`` URL a
PostgreSQL database that many API replicas share (`components.request_log_pg.PostgresRequestLog`).
``components.request_logs.open_request_log(target)`` opens the right one.

Both commit before acknowledgement: every append returns only once the transaction holding its entry has
committed (SQLite: WAL with ``synchronous=FULL``; PostgreSQL: ``synchronous_commit=on``), so a process killed
right after an append loses nothing. Group commit: concurrent ``append_request`` callers queue their rows;
whoever holds the writer lock commits every queued request in one transaction and marks them done, so a caller
that gets the lock later finds its own entry already committed and returns at once. A request id is logged at
most once (it is the primary key; a second append of it is refused).

User and item ids are the data set's external ids, ints or strings: both round-trip with their type, and the
frames hold int64 id columns when every id is an integer. Timestamps are integer microseconds since the epoch
(UTC), so windows and retention are cheap range scans. Pruning (`prune`) is a job's work, never the request path.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.errors import RecsysError
from components.item_events import datetime_us

log = logging.getLogger(__name__)

LogId = int | str
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

REQUEST_COLUMNS = ("request_id", "ts_us", "user_id", "k", "exclude_seen", "filters", "profile", "item_ids",
                   "scores", "model_version", "degraded", "cold_start", "latency_ms")
RECOMMENDATION_COLUMNS = ("request_id", "rank", "item_id", "score")
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "ts_us", "logged_us")

# Reads, in the column order the frames are built from; `{ph}` is the backend's placeholder.
SELECT_REQUESTS = "SELECT " + ", ".join(REQUEST_COLUMNS) + " FROM requests"
SELECT_RECOMMENDATIONS = ("SELECT r.request_id, q.ts_us, q.user_id, r.item_id, r.rank, r.score, q.model_version "
                          "FROM recommendations r JOIN requests q ON q.request_id = r.request_id")
SELECT_INTERACTIONS = "SELECT user_id, item_id, rating, ts_us, seq FROM interactions"


class RequestLogError(RecsysError, ValueError):
    """A record cannot be logged or the log cannot be read; the message says which field or log."""


@dataclass
class RequestRecord:
    """One served recommendation request and its response."""

    request_id: str
    ts: datetime
    user_id: LogId
    k: int
    exclude_seen: bool
    filters: dict[str, Any]
    profile: dict[str, Any]
    item_ids: list[LogId]
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


@dataclass
class Writes:
    """The rows of one transaction: requests, their ranked items, interactions (tuples in *_COLUMNS order)."""

    requests: list[tuple] = field(default_factory=list)
    recommendations: list[tuple] = field(default_factory=list)
    interactions: list[tuple] = field(default_factory=list)


@dataclass(frozen=True)
class PruneResult:
    """What `RequestLog.prune` deleted: entries logged before `cutoff`."""

    cutoff: pd.Timestamp
    requests: int
    recommendations: int
    interactions: int

    def as_dict(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff.isoformat(), "requests": self.requests,
                "recommendations": self.recommendations, "interactions": self.interactions}


def is_postgres_url(target: object) -> bool:
    """Whether a configured log target names a PostgreSQL database rather than an SQLite file."""
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def log_id(value: object, what: str) -> LogId:
    """An external id as the log stores it: an int (NumPy ints included) or a non-empty string; bools,
    floats and anything else are refused rather than coerced."""
    if isinstance(value, bool | np.bool_):
        raise RequestLogError(f"{what}: id {value!r} is a bool; ids are ints or strings")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, str) and value:
        return value
    raise RequestLogError(f"{what}: id {value!r} ({type(value).__name__}) is not an int or a non-empty string")


def id_column(values: list[Any] | pd.Series) -> np.ndarray:
    """Ids as an int64 column when all are integers (or there are none), else as objects (ints and strings)."""
    values = list(values)
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype="int64")
    return np.asarray(values, dtype=object)


def _to_us(ts: datetime | pd.Timestamp | str, what: str) -> int:
    """UTC microseconds since the epoch; naive timestamps are refused (the log is UTC only)."""
    if type(ts) is datetime and ts.tzinfo is not None:  # the request path's own stamps, without pandas
        return datetime_us(ts)
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


def _us_to_ts(values: list[int] | pd.Series) -> pd.Series:
    return pd.to_datetime(pd.Series(values, dtype="int64"), unit="us", utc=True).astype("datetime64[us, UTC]")


def _rating(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


class RequestLog:
    """The request/response and interaction log; `components.request_logs.open_request_log` opens the backend
    a target names.

    Subclasses implement `_commit` (one transaction, committed before it returns), `_select`, `_delete_before`
    and `_close`; this class holds the validation, the group commit and the frames.
    """

    placeholder = "?"  # the backend's SQL parameter marker
    shared = False  # several processes (API workers, replicas) append to it and read each other's entries

    def __init__(self, target: str | Path) -> None:
        self._lock = threading.Lock()  # the writer connection
        self._queue_lock = threading.Lock()  # the queue of requests waiting for a group commit
        self._queue: list[_Pending] = []
        self.commits = 0  # transactions committed by append_request (group commits); for tests and benchmarks

    # ---- backend --------------------------------------------------------------------------------------
    def _commit(self, writes: Writes, where: str) -> None:
        """Write `writes` in one transaction and commit it (caller holds self._lock); RequestLogError if not."""
        raise NotImplementedError

    def _select(self, sql: str, params: list[Any]) -> list[tuple]:
        """Rows of one read query (on its own connection or snapshot)."""
        raise NotImplementedError

    def _delete_before(self, cutoff_us: int) -> tuple[int, int, int]:
        """Delete entries with ts before `cutoff_us` in one transaction; (requests, recommendations,
        interactions) deleted. Caller holds self._lock."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ----------------------------------------------------------------------------------------
    @staticmethod
    def _request_rows(record: RequestRecord) -> tuple[tuple, list[tuple]]:
        where = f"request {record.request_id!r}"
        if not isinstance(record.request_id, str) or not record.request_id:
            raise RequestLogError(f"request id {record.request_id!r} must be a non-empty string")
        if len(record.item_ids) != len(record.scores):
            raise RequestLogError(f"{where}: {len(record.item_ids)} item_ids but {len(record.scores)} scores")
        item_ids = [log_id(i, f"{where} item") for i in record.item_ids]
        scores = [float(s) for s in record.scores]
        try:
            filters, profile = json.dumps(record.filters, default=str), json.dumps(record.profile, default=str)
        except (TypeError, ValueError) as err:
            raise RequestLogError(f"{where}: filters/profile must be JSON-serialisable: {err}") from err
        row = (record.request_id, _to_us(record.ts, where), log_id(record.user_id, f"{where} user"), int(record.k),
               bool(record.exclude_seen), filters, profile, json.dumps(item_ids), json.dumps(scores),
               str(record.model_version), bool(record.degraded), bool(record.cold_start), float(record.latency_ms))
        recs = [(record.request_id, rank, item, score)
                for rank, (item, score) in enumerate(zip(item_ids, scores, strict=True), 1)]
        return row, recs

    def _write(self, writes: Writes, where: str) -> None:
        with self._lock:
            self._commit(writes, where)

    def check_writable(self) -> None:
        """Commit an empty transaction (it takes the write lock like an append): RequestLogError when the log
        cannot take writes now. For readiness probes."""
        self._write(Writes(), "readiness check")

    def append_request(self, record: RequestRecord) -> None:
        """Log one request and its ranked response; returns once a transaction holding it has committed.

        Concurrent callers are group-committed (one transaction for all requests queued while the previous
        commit ran); a record that cannot be written raises here and does not fail the others.
        """
        error = self.append_request_group([record])[0]
        if error is not None:
            raise error

    def append_request_group(self, records: list[RequestRecord]) -> list[RequestLogError | None]:
        """Log several served requests, each on its own account: returns once a transaction holding each has
        committed, with each record's error (None: logged). They are committed together, with whatever other
        callers queued meanwhile (a group commit); a record that cannot be written fails alone."""
        errors: list[RequestLogError | None] = [None] * len(records)
        entries: list[tuple[int, _Pending]] = []
        for n, record in enumerate(records):
            try:
                row, recs = self._request_rows(record)
            except RequestLogError as err:
                errors[n] = err
                continue
            entries.append((n, _Pending(record.request_id, row, recs)))
        if not entries:
            return errors
        with self._queue_lock:
            self._queue += [entry for _, entry in entries]
        with self._lock:
            if not all(entry.done for _, entry in entries):  # not committed yet: commit everything queued
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit_group(batch)
        for n, entry in entries:
            errors[n] = entry.error
        return errors

    def _commit_group(self, batch: list[_Pending]) -> None:
        """Commit queued requests in one transaction (caller holds self._lock); if that fails and the group
        holds several, each is retried alone so only the faulty one gets the error."""
        where = f"request {batch[0].request_id!r}" if len(batch) == 1 else f"{len(batch)} requests"
        try:
            self._commit(Writes([e.row for e in batch], [r for e in batch for r in e.recs]), where)
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
        writes = Writes()
        for record in records:
            row, recs = self._request_rows(record)
            writes.requests.append(row)
            writes.recommendations += recs
        where = f"request {records[0].request_id!r}" if len(records) == 1 else f"{len(records)} requests"
        self._write(writes, where)
        return len(writes.requests)

    def append_interaction(self, user_id: LogId, item_id: LogId, rating: float | None,
                           event_timestamp: datetime | pd.Timestamp | str) -> None:
        """Log one user-item interaction (feedback) in one committed transaction."""
        where = f"interaction user {user_id!r} item {item_id!r}"
        row = (log_id(user_id, f"{where} user"), log_id(item_id, f"{where} item"), _rating(rating),
               _to_us(event_timestamp, where), _to_us(datetime.now(UTC), where))
        self._write(Writes(interactions=[row]), where)

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
        rows = [(log_id(u, "append_interactions user"), log_id(i, "append_interactions item"), _rating(r),
                 int(t.value // 1000), now) for u, i, r, t in zip(*columns, strict=True)]
        self._write(Writes(interactions=rows), "append_interactions")
        return len(rows)

    # ---- retention ----------------------------------------------------------------------------------------
    def prune(self, older_than: timedelta, now: datetime | None = None) -> PruneResult:
        """Delete requests (with their ranked items) and interactions whose timestamp is more than `older_than`
        before `now` (default: the current time), in one transaction. For a retention job, not the request path."""
        if older_than <= timedelta(0):
            raise RequestLogError(f"prune: retention must be positive, got {older_than}")
        cutoff = pd.Timestamp(now or datetime.now(UTC)) - older_than
        if cutoff.tzinfo is None:
            raise RequestLogError("prune: `now` has no time zone; pass an aware UTC datetime")
        with self._lock:
            requests, recs, interactions = self._delete_before(_to_us(cutoff, "prune"))
        return PruneResult(cutoff.tz_convert("UTC"), requests, recs, interactions)

    # ---- reading ----------------------------------------------------------------------------------------
    def _read(self, sql: str, since: Any, until: Any, column: str, order: str) -> list[tuple]:
        clauses, params = [], []
        lo, hi = _bound_us(since, "since"), _bound_us(until, "until")
        if lo is not None:
            clauses.append(f"{column} >= {self.placeholder}")
            params.append(lo)
        if hi is not None:
            clauses.append(f"{column} < {self.placeholder}")
            params.append(hi)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return self._select(f"{sql} ORDER BY {order}", params)

    def requests_frame(self, since: Any = None, until: Any = None) -> pd.DataFrame:
        """Requests with since <= ts < until (the logged profile as a dict per request)."""
        rows = self._read(SELECT_REQUESTS, since, until, "ts_us", "ts_us, request_id")
        cols = dict(zip(REQUEST_COLUMNS, zip(*rows, strict=True), strict=True)) if rows else {
            c: () for c in REQUEST_COLUMNS}
        out = pd.DataFrame({"request_id": pd.Series(cols["request_id"], dtype=object).astype(str),
                            "ts": _us_to_ts(cols["ts_us"]), "user_id": id_column(cols["user_id"]),
                            "k": np.asarray(cols["k"], dtype="int64"),
                            "exclude_seen": np.asarray(cols["exclude_seen"], dtype=bool)})
        for name in ("filters", "profile", "item_ids", "scores"):
            out[name] = pd.Series([json.loads(v) for v in cols[name]], dtype=object)
        out["model_version"] = pd.Series(cols["model_version"], dtype=object).astype(str)
        for name in ("degraded", "cold_start"):
            out[name] = np.asarray(cols[name], dtype=bool)
        out["latency_ms"] = np.asarray(cols["latency_ms"], dtype="float64")
        return out

    def recommendations_frame(self, since: Any = None, until: Any = None) -> pd.DataFrame:
        """Long format: request_id, ts, user_id, item_id, rank (1 = best), score, model_version."""
        rows = self._read(SELECT_RECOMMENDATIONS, since, until, "q.ts_us", "q.ts_us, r.request_id, r.rank")
        names = ("request_id", "ts_us", "user_id", "item_id", "rank", "score", "model_version")
        cols = dict(zip(names, zip(*rows, strict=True), strict=True)) if rows else {c: () for c in names}
        return pd.DataFrame({
            "request_id": pd.Series(cols["request_id"], dtype=object).astype(str), "ts": _us_to_ts(cols["ts_us"]),
            "user_id": id_column(cols["user_id"]), "item_id": id_column(cols["item_id"]),
            "rank": np.asarray(cols["rank"], dtype="int64"), "score": np.asarray(cols["score"], dtype="float64"),
            "model_version": pd.Series(cols["model_version"], dtype=object).astype(str),
        })

    def logged_interactions(self, since: Any = None, logged_since_us: int | None = None) -> pd.DataFrame:
        """Interactions with event time >= `since` and logged at or after `logged_since_us` (µs since the epoch),
        with each row's `seq` (unique per row) and `logged_us`: what a process reads to follow what others log."""
        clauses, params = [], []
        for column, bound in (("ts_us", _bound_us(since, "since")), ("logged_us", logged_since_us)):
            if bound is not None:
                clauses.append(f"{column} >= {self.placeholder}")
                params.append(int(bound))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._select(f"SELECT user_id, item_id, ts_us, seq, logged_us FROM interactions{where} ORDER BY seq",
                            params)
        names = ("user_id", "item_id", "ts_us", "seq", "logged_us")
        cols = dict(zip(names, zip(*rows, strict=True), strict=True)) if rows else {c: () for c in names}
        return pd.DataFrame({"user_id": id_column(cols["user_id"]), "item_id": id_column(cols["item_id"]),
                             "event_timestamp": _us_to_ts(cols["ts_us"]),
                             "seq": np.asarray(cols["seq"], dtype="int64"),
                             "logged_us": np.asarray(cols["logged_us"], dtype="int64")})

    def interactions_frame(self, since: Any = None, until: Any = None) -> pd.DataFrame:
        """Logged interactions in the canonical shape (user_id, item_id, rating, event_timestamp)."""
        rows = self._read(SELECT_INTERACTIONS, since, until, "ts_us", "ts_us, seq")
        names = ("user_id", "item_id", "rating", "ts_us", "seq")
        cols = dict(zip(names, zip(*rows, strict=True), strict=True)) if rows else {c: () for c in names}
        return pd.DataFrame({
            "user_id": id_column(cols["user_id"]), "item_id": id_column(cols["item_id"]),
            "rating": np.asarray([np.nan if r is None else r for r in cols["rating"]], dtype="float32"),
            "event_timestamp": _us_to_ts(cols["ts_us"]),
        })


class InteractionFollower:
    """Each interaction appended to a shared log, once, whoever appended it: what every API worker and replica
    reads to count the others' interactions (the popularity priors).

    Rows are read by the time they were stamped when logged, from `lag_s` before the previous read (a row stamped
    before one read may commit after it: group commits, a retried transaction), and rows already returned are
    skipped by their `seq`."""

    def __init__(self, log: RequestLog, lag_s: float = 60.0) -> None:
        self.log = log
        self.lag_us = int(lag_s * 1e6)
        self._seen = pd.Series(dtype="int64")  # seq -> logged_us of the rows returned within the look-back
        self._read_from: int | None = None  # logged_us of the previous read

    def restart(self, counted: pd.DataFrame, now_us: int) -> None:
        """Follow from `now_us` on; `counted` (rows of `RequestLog.logged_interactions`) were read already."""
        self._seen = pd.Series(counted["logged_us"].to_numpy(np.int64), index=counted["seq"].to_numpy(np.int64))
        self._read_from = now_us
        self._forget_before(now_us - 2 * self.lag_us)

    def new_rows(self, now_us: int) -> pd.DataFrame:
        """Interactions logged since the previous call (user_id, item_id, event_timestamp, seq, logged_us)."""
        since = None if self._read_from is None else self._read_from - self.lag_us
        frame = self.log.logged_interactions(logged_since_us=since)
        fresh = frame[~np.isin(frame["seq"].to_numpy(np.int64), self._seen.index.to_numpy(np.int64))]
        self._seen = pd.concat([self._seen, pd.Series(fresh["logged_us"].to_numpy(np.int64),
                                                      index=fresh["seq"].to_numpy(np.int64))])
        self._read_from = now_us
        self._forget_before(now_us - 2 * self.lag_us)
        return fresh.reset_index(drop=True)

    def _forget_before(self, cutoff_us: int) -> None:
        self._seen = self._seen[self._seen.to_numpy() >= cutoff_us]


# ------------------------------------------------------------------------------------------------ SQLite
# Id columns have no declared type, so SQLite keeps each value's own (INTEGER or TEXT): ids round-trip.
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    user_id NOT NULL,
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
CREATE INDEX IF NOT EXISTS interactions_logged ON interactions (logged_us);
"""


class SQLiteRequestLog(RequestLog):
    """The log in one SQLite file (created on first use): WAL, ``synchronous=FULL``, one writer connection.

    WAL needs every writer on one host: replicas on several nodes share a PostgreSQL log instead.
    """

    def __init__(self, target: str | Path) -> None:
        super().__init__(target)
        self.path = Path(target)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
            with self._conn:
                self._conn.executescript(_SQLITE_SCHEMA)
            declared = {row[1]: row[2] for row in self._conn.execute("PRAGMA table_info(requests)")}
        except sqlite3.Error as err:
            raise RequestLogError(f"cannot open request log {self.path}: {err}") from err
        if declared.get("user_id", "").upper() == "INTEGER":
            log.warning("request log %s was created before string ids: a string id of digits comes back as an "
                        "int; start a new log file for data sets with string ids", self.path)

    def __repr__(self) -> str:
        return f"SQLiteRequestLog({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _close(self) -> None:
        self._conn.close()

    def _transaction(self, statements: list[tuple[str, Any]], where: str) -> list[int]:
        """Run statements in one committed transaction; row counts per statement."""
        counts = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    cursor = (self._conn.executemany(sql, params) if isinstance(params, list)
                              else self._conn.execute(sql, params))
                    counts.append(cursor.rowcount)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as err:
            raise RequestLogError(f"{where}: {err} (log {self.path})") from err
        except sqlite3.Error as err:
            raise RequestLogError(f"{where}: cannot write to request log {self.path}: {err}") from err
        return counts

    def _commit(self, writes: Writes, where: str) -> None:
        statements: list[tuple[str, Any]] = []
        if writes.requests:
            statements.append((f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(REQUEST_COLUMNS))})", writes.requests))
            statements.append(("INSERT INTO recommendations VALUES (?,?,?,?)", writes.recommendations))
        if writes.interactions:
            statements.append((f"INSERT INTO interactions ({', '.join(INTERACTION_COLUMNS)}) VALUES (?,?,?,?,?)",
                               writes.interactions))
        self._transaction(statements, where)

    def _delete_before(self, cutoff_us: int) -> tuple[int, int, int]:
        old = "SELECT request_id FROM requests WHERE ts_us < ?"
        recs, requests, interactions = self._transaction([
            (f"DELETE FROM recommendations WHERE request_id IN ({old})", (cutoff_us,)),
            ("DELETE FROM requests WHERE ts_us < ?", (cutoff_us,)),
            ("DELETE FROM interactions WHERE ts_us < ?", (cutoff_us,)),
        ], "prune")
        return requests, recs, interactions

    def _select(self, sql: str, params: list[Any]) -> list[tuple]:
        try:
            conn = sqlite3.connect(self.path, timeout=30.0)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as err:
            raise RequestLogError(f"cannot read request log {self.path}: {err}") from err
