"""The request log (contract C6): round trip, windows, ids, retention, thread safety, durability under SIGKILL.

One suite over both backends (`log_target`: SQLite file, PostgreSQL database), as Feast's universal tests."""

import dataclasses
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from components.request_log import RequestLog, RequestLogError, RequestRecord, is_postgres_url
from components.request_logs import open_request_log
from tests.conftest import LOG_T0, request_record

T0 = LOG_T0


def test_round_trip_and_windows(log_target: str) -> None:
    with open_request_log(log_target) as log:
        for i in range(5):
            log.append_request(request_record(i, user=i % 2))
        log.append_interaction(1, 20, 4.0, T0 + timedelta(minutes=2))
        log.append_interaction(0, 30, None, T0 + timedelta(minutes=9))
        req = log.requests_frame()
        assert list(req["request_id"]) == [f"r{i}" for i in range(5)]
        assert str(req["ts"].dtype) == "datetime64[us, UTC]" and req["ts"].iloc[0] == pd.Timestamp(T0)
        assert req["item_ids"].iloc[2] == [12, 20, 30] and req["scores"].iloc[0] == [0.9, 0.5, 0.1]
        assert req["profile"].iloc[0]["occupation"] == "writer" and req["profile"].iloc[0]["gender"] == "F"
        assert req["filters"].iloc[0] == {"genre": "Drama"} and bool(req["exclude_seen"].iloc[0])
        recs = log.recommendations_frame(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3))
        assert list(recs.columns) == ["request_id", "ts", "user_id", "item_id", "rank", "score", "model_version"]
        assert list(recs["request_id"]) == ["r1"] * 3 + ["r2"] * 3 and list(recs["rank"]) == [1, 2, 3] * 2
        assert list(recs["item_id"].iloc[:3]) == [11, 20, 30]
        inter = log.interactions_frame(until=T0 + timedelta(minutes=5))
        assert len(inter) == 1 and inter["item_id"].iloc[0] == 20 and inter["rating"].dtype == "float32"
        assert pd.isna(log.interactions_frame()["rating"].iloc[1])
        with pytest.raises(RequestLogError, match="r1"):
            log.append_request(request_record(1))  # request ids are unique
        with pytest.raises(RequestLogError, match="time zone"):
            log.append_interaction(1, 2, 3.0, datetime(2026, 1, 1))
    assert open_request_log(log_target).requests_frame(since=T0 + timedelta(hours=1)).empty


def test_mismatched_scores_are_refused(log_target: str) -> None:
    bad = request_record(0)
    bad.scores = [1.0]
    with pytest.raises(RequestLogError, match="3 item_ids but 1 scores"):
        open_request_log(log_target).append_request(bad)


def test_batch_append_is_all_or_nothing(log_target: str) -> None:
    log = open_request_log(log_target)
    assert log.append_requests([request_record(0), request_record(1)]) == 2
    with pytest.raises(RequestLogError, match="3 requests"):
        # r1 exists: the whole batch is rolled back
        log.append_requests([request_record(2), request_record(3), request_record(1)])
    assert list(log.requests_frame()["request_id"]) == ["r0", "r1"] and len(log.recommendations_frame()) == 6


def test_concurrent_writers(log_target: str) -> None:
    log = open_request_log(log_target)

    def write(start: int) -> None:
        for i in range(start, start + 50):
            log.append_request(request_record(i))
            log.append_interaction(i, i, 1.0, T0)

    threads = [threading.Thread(target=write, args=(n * 1000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log.requests_frame()) == 200 and len(log.recommendations_frame()) == 600
    assert len(log.interactions_frame()) == 200


CHILD = """
import sys
from datetime import UTC, datetime
from components.request_log import RequestRecord
from components.request_logs import open_request_log
log = open_request_log(sys.argv[1])
i = 0
while True:
    log.append_request(RequestRecord(f"req-{i}", datetime.now(UTC), i, 2, True, {}, {}, [1, 2], [0.2, 0.1],
                                     "v1", False, False, 1.0))
    log.append_interaction(i, 7, 5.0, datetime.now(UTC))
    print(f"req-{i}", flush=True)  # acknowledged: append_* returned
    i += 1
"""


def test_sigkill_right_after_append_loses_nothing(log_target: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, log_target], stdout=subprocess.PIPE, text=True, env=env)
    acknowledged = []
    try:
        for line in child.stdout:
            acknowledged.append(line.strip())
            if len(acknowledged) >= 40:
                child.send_signal(signal.SIGKILL)  # killed while it keeps appending
                break
    finally:
        child.kill()
        rest, _ = child.communicate(timeout=30)
    acknowledged += [line for line in rest.split() if line]
    assert child.returncode == -signal.SIGKILL
    log = open_request_log(log_target)
    logged = set(log.requests_frame()["request_id"])
    assert set(acknowledged) <= logged, f"lost: {sorted(set(acknowledged) - logged)}"
    inter = log.interactions_frame()
    assert set(inter["user_id"]) >= {int(a.split("-")[1]) for a in acknowledged}
    assert len(log.recommendations_frame()) == 2 * len(logged)  # no half-written request


def _queued_behind_held_lock(log: RequestLog, records: list[RequestRecord]) -> tuple[list[threading.Thread], dict]:
    """Start one appending thread per record while the test holds the writer lock, wait until all are queued."""
    errors: dict[str, Exception] = {}

    def append(rec: RequestRecord) -> None:
        try:
            log.append_request(rec)
        except RequestLogError as err:
            errors[rec.request_id] = err

    threads = [threading.Thread(target=append, args=(rec,)) for rec in records]
    for t in threads:
        t.start()
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    while len(log._queue) < len(records):
        assert datetime.now(UTC) < deadline, "appends were not queued"
        threading.Event().wait(0.005)
    return threads, errors


def test_concurrent_appends_are_group_committed(log_target: str) -> None:
    log = open_request_log(log_target)
    with log._lock:  # a commit in progress: the next callers queue up behind it
        threads, errors = _queued_behind_held_lock(log, [request_record(i) for i in range(12)])
        assert all(t.is_alive() for t in threads)  # nobody returns before its entry is committed
    for t in threads:
        t.join(timeout=30)
    assert not errors and log.commits == 1  # twelve requests, one transaction
    # each entry is durable: a fresh connection (another process would see the same) reads all of them
    assert sorted(open_request_log(log_target).requests_frame()["request_id"]) == sorted(
        f"r{i}" for i in range(12))
    assert len(log.recommendations_frame()) == 36


def test_bad_record_in_a_group_fails_alone(log_target: str) -> None:
    log = open_request_log(log_target)
    log.append_request(request_record(1))
    with log._lock:
        threads, errors = _queued_behind_held_lock(log, [request_record(2), request_record(1), request_record(3)])
    for t in threads:
        t.join(timeout=30)
    assert list(errors) == ["r1"] and "r1" in str(errors["r1"])  # the duplicate id, and only it, is refused
    assert list(log.requests_frame()["request_id"]) == ["r1", "r2", "r3"] and len(log.recommendations_frame()) == 9


def test_a_group_of_records_is_committed_once_and_each_bad_record_fails_alone(log_target: str) -> None:
    log = open_request_log(log_target)
    log.append_request(request_record(1))
    bad = dataclasses.replace(request_record(4), scores=[0.5])  # fewer scores than items: refused before writing
    errors = log.append_request_group([request_record(2), request_record(1), bad, request_record(3)])
    assert errors[0] is None and errors[3] is None
    assert "r1" in str(errors[1]) and "scores" in str(errors[2])
    assert list(log.requests_frame()["request_id"]) == ["r1", "r2", "r3"] and len(log.recommendations_frame()) == 9
    commits = log.commits
    assert log.append_request_group([request_record(i) for i in range(5, 10)]) == [None] * 5
    assert log.commits == commits + 1  # five requests, one transaction


THREADED_CHILD = """
import sys, threading
from datetime import UTC, datetime
from components.request_log import RequestRecord
from components.request_logs import open_request_log
log = open_request_log(sys.argv[1])
out = threading.Lock()
def write(t):
    i = 0
    while True:
        rid = f"t{t}-{i}"
        log.append_request(RequestRecord(rid, datetime.now(UTC), i, 2, True, {}, {}, [1, 2], [0.2, 0.1],
                                         "v1", False, False, 1.0))
        with out:
            print(rid, flush=True)  # acknowledged: append_request returned
        i += 1
for t in range(6):
    threading.Thread(target=write, args=(t,)).start()
"""


def test_sigkill_during_group_commits_loses_no_acknowledged_request(log_target: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", THREADED_CHILD, log_target], stdout=subprocess.PIPE, text=True,
                             env=env)
    acknowledged = []
    try:
        for line in child.stdout:
            acknowledged.append(line.strip())
            if len(acknowledged) >= 150:
                child.send_signal(signal.SIGKILL)  # killed while six threads keep appending
                break
    finally:
        child.kill()
        rest, _ = child.communicate(timeout=30)
    acknowledged += [line for line in rest.split() if line]
    assert child.returncode == -signal.SIGKILL
    log = open_request_log(log_target)
    logged = set(log.requests_frame()["request_id"])
    assert set(acknowledged) <= logged, f"lost: {sorted(set(acknowledged) - logged)}"
    assert len(log.recommendations_frame()) == 2 * len(logged)


def test_external_ids_round_trip_with_their_type(log_target: str) -> None:
    with open_request_log(log_target) as log:
        log.append_request(request_record(0, user=7))
        assert log.requests_frame()["user_id"].dtype == "int64"  # all ids integers: int64 columns
        assert log.recommendations_frame()["item_id"].dtype == "int64"
        shop = request_record(1)
        shop.user_id, shop.item_ids = "u-42", ["sku-1", "10", 10]
        log.append_request(shop)
        log.append_interaction("u-42", "sku-1", None, T0)
        log.append_interactions(pd.DataFrame({"user_id": ["10", 10], "item_id": ["sku-2", "sku-3"],
                                              "event_timestamp": pd.to_datetime([T0, T0], utc=True)}))
        req = log.requests_frame()
        assert list(req["user_id"]) == [7, "u-42"] and req["item_ids"].iloc[1] == ["sku-1", "10", 10]
        recs = log.recommendations_frame(since=T0 + timedelta(minutes=1))
        assert list(recs["item_id"]) == ["sku-1", "10", 10]  # "10" and 10 stay different ids
        assert [type(v) for v in recs["item_id"]] == [str, str, int]
        inter = log.interactions_frame()
        assert list(inter["user_id"]) == ["u-42", "10", 10] and list(inter["item_id"]) == ["sku-1", "sku-2", "sku-3"]
        for bad in (True, 1.5, "", None):
            with pytest.raises(RequestLogError, match="id"):
                log.append_interaction(bad, 1, None, T0)  # no coercion: bools and floats are not ids
        assert len(log.interactions_frame()) == 3


def test_prune_deletes_only_entries_past_retention(log_target: str) -> None:
    now = T0 + timedelta(days=30)
    with open_request_log(log_target) as log:
        for day in (1, 10, 25, 29):
            log.append_request(request_record(day, ts=T0 + timedelta(days=day)))
            log.append_interaction(day, 5, 1.0, T0 + timedelta(days=day))
        result = log.prune(timedelta(days=14), now=now)
        assert (result.requests, result.recommendations, result.interactions) == (2, 6, 2)
        assert result.cutoff == pd.Timestamp(T0 + timedelta(days=16))
        assert list(log.requests_frame()["request_id"]) == ["r25", "r29"] and len(log.recommendations_frame()) == 6
        assert list(log.interactions_frame()["user_id"]) == [25, 29]
        assert log.prune(timedelta(days=14), now=now).requests == 0  # idempotent
        log.append_request(request_record(30, ts=now))  # the log keeps working after a prune
        with pytest.raises(RequestLogError, match="positive"):
            log.prune(timedelta(0))



def test_check_writable_commits_nothing_and_fails_when_the_log_is_gone(log_target: str, request) -> None:
    log = open_request_log(log_target)
    log.check_writable()  # an empty committed transaction (readiness probes)
    assert log.requests_frame().empty and log.interactions_frame().empty
    if is_postgres_url(log_target):  # the database disappears under the open log
        import psycopg

        from components.request_log_pg import PASSWORD_ENV

        server = request.getfixturevalue("postgres")
        with psycopg.connect(server.url("postgres"), password=os.environ[PASSWORD_ENV], autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{log_target.rsplit("/", 1)[1]}" WITH (FORCE)')
    else:
        log.close()
    with pytest.raises(RequestLogError):
        log.check_writable()


def test_a_follower_returns_every_logged_interaction_once_whoever_logged_it(log_target: str) -> None:
    from components.item_events import datetime_us
    from components.request_log import InteractionFollower

    now = lambda: datetime_us(datetime.now(UTC))  # noqa: E731
    first, second = open_request_log(log_target), open_request_log(log_target)  # two processes' handles
    try:
        first.append_interaction(1, 10, 5.0, T0)
        second.append_interaction("u-2", "i-20", None, T0 + timedelta(minutes=1))
        counted = first.logged_interactions(since=T0 + timedelta(seconds=30))  # what a start read
        assert counted["user_id"].tolist() == ["u-2"] and counted["item_id"].tolist() == ["i-20"]
        follower = InteractionFollower(first, lag_s=60)
        follower.restart(first.logged_interactions(), now())
        assert follower.new_rows(now()).empty  # both were counted at the start
        second.append_interaction(3, 30, 1.0, T0 + timedelta(minutes=2))
        first.append_interaction(4, 40, 2.0, T0 - timedelta(days=3))  # an old event logged late still counts
        fresh = follower.new_rows(now())
        assert sorted(fresh["user_id"].tolist()) == [3, 4] and sorted(fresh["item_id"].tolist()) == [30, 40]
        assert fresh["seq"].is_unique and follower.new_rows(now()).empty  # each row once, within the look-back
        late = InteractionFollower(second, lag_s=60)  # a fresh follower that counted nothing yet reads them all
        late.restart(second.logged_interactions().iloc[:0], now() - 120 * 10**6)
        assert late.new_rows(now())["user_id"].tolist() == [1, "u-2", 3, 4]
    finally:
        first.close()
        second.close()
