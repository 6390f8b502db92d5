"""The API with a Redis online store that goes away: popularity answers marked degraded, interactions still
logged, then recovery without a restart once Redis is back (re-materialized) on the same port."""

import subprocess
import time
from datetime import UTC, datetime

import httpx
import pytest
import redis

from components.features import open_store
from components.request_log import RequestLog
from tests.serving.conftest import free_port
from tests.serving.service_stack import NOW, build_stack

pytestmark = pytest.mark.integration


def start_redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop_redis(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory, bundles):
    port = free_port()
    server = {"proc": start_redis(port)}
    stack = build_stack(tmp_path_factory.mktemp("api_redis"), bundles["a"],
                        overrides={"features.online_store": "redis",
                                   "features.redis_connection": f"127.0.0.1:{port}"})
    try:
        yield stack, port, server
    finally:
        stack.stop()
        stop_redis(server["proc"])


def test_feature_store_down_degrades_then_recovers(redis_stack):
    stack, port, server = redis_stack
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        healthy = http.post("/recommend", json={"user_id": 4, "k": 5}).json()
        assert not healthy["degraded"] and healthy["model_version"] == "test-0"

        stop_redis(server["proc"])
        for _ in range(3):
            resp = http.post("/recommend", json={"user_id": 4, "k": 5, "filters": {"genres": ["Drama"]}})
            assert resp.status_code == 200, resp.text
            down = resp.json()
            assert down["timings_ms"]["feast"] < 3000, "a dead store must not stall requests (deadline 1 s)"
            assert down["degraded"] and down["model_version"] == "popularity"
            assert any("feature store" in r for r in down["reasons"])
            assert len(down["items"]) == 5 and all("Drama" in i["genres"] for i in down["items"])
        assert http.get("/readyz").status_code == 503
        resp = http.post("/interactions", json={"user_id": 4, "item_id": healthy["items"][0]["item_id"]})
        assert resp.status_code == 200 and resp.json()["logged"] and not resp.json()["pushed"]
        logged = RequestLog(stack.config.serving.request_log).interactions_frame()
        assert (logged.user_id == 4).sum() == 1

        server["proc"] = start_redis(port)  # an empty Redis: load the features again
        open_store(stack.config).materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=NOW)
        for _ in range(100):
            again = http.post("/recommend", json={"user_id": 4, "k": 5}).json()
            if not again["degraded"]:
                break
            time.sleep(0.1)
        assert not again["degraded"] and again["items"] == healthy["items"]
        assert http.get("/readyz").status_code == 200
