"""Two API processes writing one PostgreSQL request log under load, one killed -9: every acknowledged request
is logged once with all its ranked items, and the other process goes on answering and logging."""

import threading
import time
import uuid

import httpx
import pytest

from benchmarks.serving_stack import build_stack
from components.processes import free_port, stop_process
from components.request_logs import open_request_log
from serving.api_server import api_url, start_api

pytestmark = pytest.mark.integration


def test_two_apis_share_a_postgres_log_and_a_kill_9_loses_nothing(tmp_path, bundles, postgres):
    log_url = postgres.create_database(f"api_{uuid.uuid4().hex[:12]}")
    stack = build_stack(tmp_path / "stack", bundles["a"], overrides={"serving.request_log": log_url})
    other = stack.config.model_copy(deep=True)
    other.serving.api_port = free_port()
    other_pid = None
    acked: dict[str, list[str]] = {"killed": [], "survivor": []}
    stop, killed_at = threading.Event(), {}
    try:
        other_pid = start_api(other, detach=False)

        def client(name: str, base: str, user_id: int) -> None:
            with httpx.Client(base_url=base, timeout=10, headers=stack.auth_headers()) as http:  # one keys file
                while not stop.is_set():
                    try:
                        resp = http.post("/recommend", json={"user_id": user_id, "k": 5})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if resp.status_code == 200:
                        acked[name].append(resp.json()["request_id"])

        threads = [threading.Thread(target=client, args=(name, base, user))
                   for name, base in (("killed", stack.url), ("survivor", api_url(other))) for user in (1, 2, 3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while min(len(a) for a in acked.values()) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        stack.kill_api()  # SIGKILL to one API (server and worker) while both write the log
        killed_at["survivor"] = len(acked["survivor"])
        time.sleep(1.0)  # the other API keeps answering (and logging) alone
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert len(acked["killed"]) >= 30 and len(acked["survivor"]) > killed_at["survivor"]
        with open_request_log(log_url) as log:
            requests = log.requests_frame()
            per_request = log.recommendations_frame().groupby("request_id").size()
        assert requests["request_id"].is_unique
        every = acked["killed"] + acked["survivor"]
        missing = set(every) - set(requests["request_id"])
        assert not missing, f"{len(missing)} acknowledged requests lost"
        assert all(per_request[r] == 5 for r in every), "each logged request keeps all its ranked items"
    finally:
        stop.set()
        if other_pid is not None:
            stop_process(other_pid)
        stack.stop()


def test_two_api_workers_answer_and_log_to_one_postgres_log(tmp_path, bundles, postgres):
    """serving.api_workers=2 (allowed with the shared log only): two worker processes answer, and every
    acknowledged request and interaction is in the one log."""
    import psutil

    log_url = postgres.create_database(f"workers_{uuid.uuid4().hex[:12]}")
    stack = build_stack(tmp_path / "stack", bundles["a"],
                        overrides={"serving.request_log": log_url, "serving.api_workers": 2})
    try:
        workers = [p for p in psutil.Process(stack.api_pid).children(recursive=True)
                   if "_bentoml_impl.worker" in " ".join(p.cmdline())]
        assert len(workers) == 2
        acked = []
        with httpx.Client(base_url=stack.url, timeout=10, headers=stack.auth_headers()) as http:
            for n in range(40):
                resp = http.post("/recommend", json={"user_id": 1 + n % 5, "k": 5})
                assert resp.status_code == 200, resp.text
                acked.append(resp.json()["request_id"])
            item = int(stack.tables["items"]["item_id"].iloc[0])
            assert http.post("/interactions", json={"user_id": 2, "item_id": item}).json()["logged"]
        with open_request_log(log_url) as log:
            assert set(acked) <= set(log.requests_frame()["request_id"])
            assert log.interactions_frame()[["user_id", "item_id"]].values.tolist() == [[2, item]]
    finally:
        stack.stop()
