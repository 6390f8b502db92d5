"""The request log in PostgreSQL (psycopg 3): one log that many API replicas, on any hosts, write at once.

The target is a ``postgresql://user@host:port/db`` URL without a password; the password comes from the
environment (`PASSWORD_ENV`, else libpq's own PGPASSWORD or ~/.pgpass), so it is never in a ConfigMap, a log
line or an error message (URLs are shown redacted). Commit before acknowledgement: each transaction runs with
``synchronous_commit=on`` and returns only after COMMIT succeeded. A transaction whose outcome is unknown (the
connection broke around COMMIT) is resolved on a fresh connection through its commit marker (a row in
``request_log_commits`` written by the same transaction): committed → done, not committed → retried once, so no
entry is lost after acknowledgement and none is written twice.

`postgres_server` starts a throw-away server (Debian's postgresql) for tests, benchmarks and local trials.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from components.request_log import (
    INTERACTION_COLUMNS,
    REQUEST_COLUMNS,
    RequestLog,
    RequestLogError,
    Writes,
)

PASSWORD_ENV = "RECSYS_REQUEST_LOG_PASSWORD"
PASSWORD_SECRET = "recsys-request-log-db"  # the cluster's Secret (key `password`), k8s/base/postgres.yaml
PG_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")
CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_S = 10  # per statement of the request path; the prune job lifts it for its deletes
_SCHEMA_LOCK = 0x5EC5_1061  # advisory lock: replicas starting together create the tables once

# Ids are JSONB so that ints and strings keep their type (5 and "5" differ).
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS requests (
        request_id TEXT PRIMARY KEY,
        ts_us BIGINT NOT NULL,
        user_id JSONB NOT NULL,
        k INTEGER NOT NULL,
        exclude_seen BOOLEAN NOT NULL,
        filters TEXT NOT NULL,
        profile TEXT NOT NULL,
        item_ids TEXT NOT NULL,
        scores TEXT NOT NULL,
        model_version TEXT NOT NULL,
        degraded BOOLEAN NOT NULL,
        cold_start BOOLEAN NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts_us)",
    """CREATE TABLE IF NOT EXISTS recommendations (
        request_id TEXT NOT NULL REFERENCES requests (request_id),
        rank INTEGER NOT NULL,
        item_id JSONB NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (request_id, rank))""",
    """CREATE TABLE IF NOT EXISTS interactions (
        seq BIGSERIAL PRIMARY KEY,
        user_id JSONB NOT NULL,
        item_id JSONB NOT NULL,
        rating DOUBLE PRECISION,
        ts_us BIGINT NOT NULL,
        logged_us BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS interactions_ts ON interactions (ts_us)",
    """CREATE TABLE IF NOT EXISTS request_log_commits (
        txn UUID PRIMARY KEY,
        committed_us BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS request_log_commits_ts ON request_log_commits (committed_us)",
    # the followers' reads (InteractionFollower); last, so a log created before it gets it once
    "CREATE INDEX IF NOT EXISTS interactions_logged ON interactions (logged_us)",
)
# the schema's last object exists (committed): a query of pg_class, so it sees what committed before it started
_SCHEMA_DONE = ("SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = 'interactions_logged' AND n.nspname = current_schema())")
_INSERT_REQUEST = (f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
                   f"VALUES ({', '.join(['%s'] * len(REQUEST_COLUMNS))})")
_INSERT_RECOMMENDATION = "INSERT INTO recommendations VALUES (%s, %s, %s, %s)"
_INSERT_INTERACTION = f"INSERT INTO interactions ({', '.join(INTERACTION_COLUMNS)}) VALUES (%s, %s, %s, %s, %s)"


def redact_url(url: str) -> str:
    """The URL with any password (user info or `password=` query parameter) replaced by ***, for messages."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}")
    query = "&".join("password=***" if q.lower().startswith("password=") else q for q in parts.query.split("&"))
    return urlunsplit(parts._replace(query=query))


def check_url(url: str) -> str:
    """Refuse a log URL that carries a password (it would end up in a ConfigMap or a log line)."""
    parts = urlsplit(url)
    if parts.password is not None or "password" in parse_qs(parts.query):
        raise RequestLogError(f"request log URL {redact_url(url)} carries a password: remove it and "
                              f"set {PASSWORD_ENV} (or PGPASSWORD) in the environment instead")
    return url


def _now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class PostgresRequestLog(RequestLog):
    """The log in a PostgreSQL database (tables created on first use); one writer connection per instance,
    reconnected when it breaks; reads on their own connections."""

    placeholder = "%s"
    shared = True

    def __init__(self, target: str) -> None:
        import psycopg

        super().__init__(target)
        self._psycopg = psycopg
        self.url = check_url(str(target))
        self._conn: Any = None
        try:
            self._create_schema(self._writer())
        except psycopg.Error as err:
            self._drop_writer()
            raise RequestLogError(f"cannot open request log {redact_url(self.url)}: {_first_line(err)}") from err

    def __repr__(self) -> str:
        return f"PostgresRequestLog({redact_url(self.url)!r})"

    @staticmethod
    def _create_schema(conn: Any) -> None:
        """Create the tables once: skipped when they exist (DDL, even IF NOT EXISTS, would lock tables that
        other writers are inserting into and could deadlock with them); serialised by an advisory lock.

        The check after the lock reads pg_class with the statement's snapshot: `to_regclass` there would answer
        from this session's catalog cache, which still says "absent" when another replica committed the tables
        while this one waited (and this one's DDL then deadlocked with that replica's first inserts)."""
        if conn.execute(_SCHEMA_DONE).fetchone()[0]:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            if conn.execute(_SCHEMA_DONE).fetchone()[0]:
                return
            for statement in _SCHEMA:
                conn.execute(statement)

    # ---- connections --------------------------------------------------------------------------------
    def _connect(self) -> Any:
        password = os.environ.get(PASSWORD_ENV)
        extra = {"password": password} if password else {}
        # a server that hangs must not hang the API: statements time out, dead peers are noticed by keepalives
        # and the TCP user timeout (unacknowledged writes)
        return self._psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                     application_name="recsys-request-log",
                                     options=f"-c synchronous_commit=on -c statement_timeout={STATEMENT_TIMEOUT_S}s",
                                     keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                                     tcp_user_timeout=STATEMENT_TIMEOUT_S * 1000, **extra)

    def _writer(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop_writer()
            self._conn = self._connect()
        return self._conn

    def _drop_writer(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except self._psycopg.Error:
                pass
        self._conn = None

    def _close(self) -> None:
        self._drop_writer()

    # ---- writing ----------------------------------------------------------------------------------------
    def _params(self, writes: Writes) -> tuple[list[tuple], list[tuple], list[tuple]]:
        from psycopg.types.json import Jsonb

        requests = [(*row[:2], Jsonb(row[2]), *row[3:]) for row in writes.requests]
        recs = [(rid, rank, Jsonb(item), score) for rid, rank, item, score in writes.recommendations]
        interactions = [(Jsonb(u), Jsonb(i), *rest) for u, i, *rest in writes.interactions]
        return requests, recs, interactions

    def _run(self, txn: uuid.UUID, requests: list[tuple], recs: list[tuple], interactions: list[tuple]) -> None:
        conn = self._writer()
        # pipeline mode: BEGIN, the inserts and COMMIT go out together (one round trip); leaving the block
        # waits for every result, so COMMIT has succeeded when this returns
        with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
            cur.execute("INSERT INTO request_log_commits VALUES (%s, %s)", (txn, _now_us()))
            if requests:
                cur.executemany(_INSERT_REQUEST, requests)
            if recs:
                cur.executemany(_INSERT_RECOMMENDATION, recs)
            if interactions:
                cur.executemany(_INSERT_INTERACTION, interactions)

    def _committed(self, txn: uuid.UUID) -> bool:
        """Whether the transaction with this marker committed (asked on a fresh connection)."""
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM request_log_commits WHERE txn = %s", (txn,)).fetchone() is not None

    def _commit(self, writes: Writes, where: str) -> None:
        psycopg = self._psycopg
        params, txn = self._params(writes), uuid.uuid4()
        for attempt in (1, 2):
            try:
                self._run(txn, *params)
                return
            except psycopg.errors.IntegrityError as err:
                raise RequestLogError(f"{where}: {_first_line(err)} (log {redact_url(self.url)})") from err
            except psycopg.OperationalError as err:  # connection lost, server restarted, ...: outcome unknown
                self._drop_writer()
                try:
                    if self._committed(txn):
                        return
                except psycopg.Error as check:
                    raise RequestLogError(f"{where}: not acknowledged, request log {redact_url(self.url)} "
                                          f"unreachable: {_first_line(check)}") from err
                if attempt == 2:
                    raise RequestLogError(f"{where}: cannot write to request log {redact_url(self.url)}: "
                                          f"{_first_line(err)}") from err
            except psycopg.Error as err:
                raise RequestLogError(f"{where}: cannot write to request log {redact_url(self.url)}: "
                                      f"{_first_line(err)}") from err

    def _delete_before(self, cutoff_us: int) -> tuple[int, int, int]:
        old = "SELECT request_id FROM requests WHERE ts_us < %s"
        counts = []
        try:
            conn = self._writer()
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET LOCAL statement_timeout = 0")  # a large prune may take long; it only deletes
                for sql in (f"DELETE FROM recommendations WHERE request_id IN ({old})",
                            "DELETE FROM requests WHERE ts_us < %s", "DELETE FROM interactions WHERE ts_us < %s",
                            "DELETE FROM request_log_commits WHERE committed_us < %s"):
                    cur.execute(sql, (cutoff_us,))
                    counts.append(cur.rowcount)
        except self._psycopg.Error as err:
            self._drop_writer()
            raise RequestLogError(f"prune: request log {redact_url(self.url)}: {_first_line(err)}") from err
        recs, requests, interactions, _ = counts
        return requests, recs, interactions

    # ---- reading ----------------------------------------------------------------------------------------
    def _select(self, sql: str, params: list[Any]) -> list[tuple]:
        try:
            with self._connect() as conn:
                return conn.execute(sql, params).fetchall()
        except self._psycopg.Error as err:
            raise RequestLogError(f"cannot read request log {redact_url(self.url)}: {_first_line(err)}") from err


# ---------------------------------------------------------------------------------------- a local server
def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (Debian keeps them off PATH, under /usr/lib/postgresql/N/bin)."""
    for folder in PG_BIN_DIRS:
        if (Path(folder) / name).exists():
            return str(Path(folder) / name)
    found = shutil.which(name)
    if found is None:
        raise RequestLogError(f"PostgreSQL's {name} not found: run scripts/system_deps.sh (Debian: postgresql)")
    return found


@dataclass(frozen=True)
class LocalPostgres:
    """A running throw-away server: its URL (no password in it) and the password to put in the environment."""

    host: str
    port: int
    user: str
    password: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a fresh database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), password=self.password, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def postgres_server(user: str = "recsys", timeout_s: float = 30.0) -> Iterator[LocalPostgres]:
    """Start a throw-away PostgreSQL (initdb in a temporary folder, password authentication on a free loopback
    port, no Unix socket outside that folder); yield it; stop it and delete its data on exit. As root the
    server runs as the `postgres` system user (PostgreSQL refuses to run as root)."""
    import psycopg

    initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
    password = uuid.uuid4().hex
    proc: subprocess.Popen | None = None
    try:
        data = root / "data"
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n", encoding="utf-8")
        if run_as:
            shutil.chown(root, run_as)
            shutil.chown(pwfile, run_as)
        subprocess.run([initdb, "-D", str(data), "-U", user, f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                        "--auth-local=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions"],
                       check=True, capture_output=True, user=run_as)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = subprocess.Popen([postgres, "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
                                 "-c", f"unix_socket_directories={root}", "-c", "max_connections=100",
                                 "-c", "shared_buffers=32MB"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, user=run_as)
        server = LocalPostgres("127.0.0.1", port, user, password)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(server.url(), password=password, connect_timeout=2).close()
                break
            except psycopg.OperationalError as err:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RequestLogError(f"PostgreSQL did not start on 127.0.0.1:{port}: {_first_line(err)}") from err
                time.sleep(0.1)
        yield server
    except subprocess.CalledProcessError as err:
        raise RequestLogError(f"initdb failed: {err.stderr.decode(errors='replace')[-500:]}") from err
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)
