"""PostgreSQL-only behaviour of the request log: several writer processes on one database (one killed -9),
reconnection, transactions whose COMMIT outcome is unknown, and the password kept out of URLs and messages."""

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from components.config import ConfigError, load_config
from components.request_log import RequestLog, RequestLogError
from components.request_log_pg import _SCHEMA, _SCHEMA_LOCK, PASSWORD_ENV, PostgresRequestLog, redact_url
from components.request_logs import open_request_log
from tests.conftest import request_record

pytestmark = pytest.mark.integration

WRITER = """
import sys, threading
from datetime import UTC, datetime
from components.request_log import RequestRecord
from components.request_logs import open_request_log
log = open_request_log(sys.argv[1])
name = sys.argv[2]
out = threading.Lock()
def write(t):
    i = 0
    while True:
        rid = f"{name}-{t}-{i}"
        log.append_request(RequestRecord(rid, datetime.now(UTC), rid, 2, True, {}, {}, ["a", 2], [0.2, 0.1],
                                         "v1", False, False, 1.0))
        log.append_interaction(rid, 7, 5.0, datetime.now(UTC))
        with out:
            print(rid, flush=True)  # acknowledged: both appends returned
        i += 1
        if i == int(sys.argv[3]):
            return
for t in range(4):
    threading.Thread(target=write, args=(t,)).start()
"""


@pytest.fixture
def pg_url(postgres) -> str:
    import uuid

    return postgres.create_database(f"log_{uuid.uuid4().hex[:12]}")


def test_two_writer_processes_one_killed_lose_no_acknowledged_entry(pg_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    victim = subprocess.Popen([sys.executable, "-c", WRITER, pg_url, "A", "1000000"], stdout=subprocess.PIPE,
                              text=True, env=env)
    survivor = subprocess.Popen([sys.executable, "-c", WRITER, pg_url, "B", "60"], stdout=subprocess.PIPE,
                                text=True, env=env)
    acknowledged: list[str] = []
    reader = threading.Thread(target=lambda: acknowledged.extend(line.strip() for line in survivor.stdout))
    reader.start()
    try:
        for line in victim.stdout:
            acknowledged.append(line.strip())
            if sum(a.startswith("A-") for a in acknowledged) >= 120:
                victim.send_signal(signal.SIGKILL)  # killed while its four threads and the other process write
                break
    finally:
        victim.kill()
        rest, _ = victim.communicate(timeout=30)
        survivor.wait(timeout=60)
        reader.join(timeout=30)
    acknowledged += [line for line in rest.split() if line]
    assert victim.returncode == -signal.SIGKILL and survivor.returncode == 0
    assert sum(a.startswith("B-") for a in acknowledged) == 240  # the other writer went on to its end
    with open_request_log(pg_url) as log:
        requests, inter = log.requests_frame(), log.interactions_frame()
        assert requests["request_id"].is_unique
        logged = set(requests["request_id"])
        assert set(acknowledged) <= logged, f"lost: {sorted(set(acknowledged) - logged)}"
        assert len(log.recommendations_frame()) == 2 * len(logged)  # no half-written request
        counts = inter["user_id"].value_counts()
        assert counts.max() == 1  # no interaction twice
        assert set(acknowledged) <= set(counts.index)


def test_opening_the_log_does_not_wait_for_writers_in_flight(pg_url: str, postgres) -> None:
    """A replica starting while others write: no DDL on existing tables (it would queue behind their
    transactions, or deadlock with them)."""
    open_request_log(pg_url).close()  # the schema exists
    with psycopg.connect(pg_url, password=postgres.password) as writer:
        writer.execute("INSERT INTO interactions (user_id, item_id, rating, ts_us, logged_us) "
                       "VALUES ('1', '2', NULL, 0, 0)")  # a transaction in flight, holding its table locks
        opened: list[RequestLog] = []
        thread = threading.Thread(target=lambda: opened.append(open_request_log(pg_url)), daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert opened, "opening the log waited for another writer's transaction"
        opened[0].close()
        writer.rollback()


def test_a_replica_that_waited_for_the_schema_finds_it_and_runs_no_ddl(pg_url: str, postgres) -> None:
    """Two replicas start on an empty database: the second checks (no tables yet), waits for the schema lock
    while the first creates them, then must see them, not its cached "absent", and run no DDL: its CREATE INDEX
    would queue behind the first replica's inserts (a deadlock once those wait on it in turn)."""
    def connect() -> psycopg.Connection:
        return psycopg.connect(pg_url, password=postgres.password, autocommit=True)

    with connect() as holder, connect() as creator, connect() as waiter, connect() as watcher:
        holder.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))  # the first replica's lock
        finished = threading.Event()
        thread = threading.Thread(target=lambda: (PostgresRequestLog._create_schema(waiter), finished.set()),
                                  daemon=True)
        thread.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        deadline = time.monotonic() + 10
        while watcher.execute(waiting).fetchone()[0] == 0:
            assert time.monotonic() < deadline, "the second replica never waited for the schema lock"
            time.sleep(0.05)
        with creator.transaction():  # the first replica's schema, committed while the second waits
            for statement in _SCHEMA:
                creator.execute(statement)
        with psycopg.connect(pg_url, password=postgres.password) as writer:  # its first insert, in flight
            writer.execute("INSERT INTO interactions (user_id, item_id, rating, ts_us, logged_us) "
                           "VALUES ('1', '2', NULL, 0, 0)")
            holder.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
            done = finished.wait(timeout=10)
            writer.rollback()
        thread.join(timeout=10)
        assert done, "the second replica ran the schema's DDL behind the first one's writes"


def test_a_log_created_before_the_followers_index_gets_it_once(pg_url: str, postgres) -> None:
    open_request_log(pg_url).close()
    index = "SELECT to_regclass('interactions_logged') IS NOT NULL"
    with psycopg.connect(pg_url, password=postgres.password, autocommit=True) as conn:
        conn.execute("DROP INDEX interactions_logged")  # the schema as an earlier release created it
        open_request_log(pg_url).close()
        assert conn.execute(index).fetchone()[0]


def test_writer_reconnects_after_its_connection_is_killed(pg_url: str, postgres) -> None:
    with open_request_log(pg_url) as log:
        log.append_request(request_record(1))
        with psycopg.connect(postgres.url(), password=postgres.password, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'recsys-request-log'")
        log.append_request(request_record(2))  # the broken writer connection is replaced
        assert list(log.requests_frame()["request_id"]) == ["r1", "r2"]


@pytest.mark.parametrize("committed", [True, False], ids=["lost-after-commit", "lost-before-commit"])
def test_unknown_commit_outcome_is_resolved_without_loss_or_duplicate(pg_url: str, committed: bool,
                                                                      monkeypatch) -> None:
    log = open_request_log(pg_url)
    real_run, calls = PostgresRequestLog._run, []

    def flaky_run(self, txn, *params):
        calls.append(txn)
        if len(calls) == 1:
            if committed:
                real_run(self, txn, *params)  # the commit went through, then the connection broke
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real_run(self, txn, *params)

    monkeypatch.setattr(PostgresRequestLog, "_run", flaky_run)
    log.append_request(request_record(1))  # acknowledged: found committed, or retried once under the same marker
    assert len(calls) == (1 if committed else 2) and len(set(calls)) == 1
    calls.clear()
    log.append_interaction("u", "i", None, datetime.now(UTC))
    assert len(calls) == (1 if committed else 2)
    monkeypatch.undo()
    assert list(log.requests_frame()["request_id"]) == ["r1"] and len(log.recommendations_frame()) == 3
    assert len(log.interactions_frame()) == 1
    log.close()


def test_password_never_in_the_url_nor_in_messages(postgres, monkeypatch) -> None:
    secret = "s3cret-" + str(time.time_ns())
    with_password = f"postgresql://recsys:{secret}@127.0.0.1:{postgres.port}/postgres"
    with pytest.raises(RequestLogError, match="carries a password") as err:
        open_request_log(with_password)
    assert secret not in str(err.value) and redact_url(with_password).count("***") == 1
    with pytest.raises(ConfigError, match="password") as err:
        load_config(overrides=[f"serving.request_log={with_password}"])
    assert secret not in str(err.value)
    monkeypatch.setenv(PASSWORD_ENV, secret)  # a wrong password from the environment: refused, not printed
    with pytest.raises(RequestLogError, match="password authentication failed") as err:
        open_request_log(postgres.url())
    assert secret not in str(err.value)
    config = load_config(overrides=[f"serving.request_log={postgres.url()}"])
    assert config.serving.request_log == postgres.url()  # a URL stays a URL (not a Path)
