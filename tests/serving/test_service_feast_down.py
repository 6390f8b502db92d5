"""The API with a Redis online store that goes away: popularity answers marked degraded, interactions still
logged, then recovery without a restart once Redis is back (re-materialized) on the same port. Redis requires a
password, which the API and the test's store get from the environment."""

import json
import time
from datetime import UTC, datetime

import httpx
import pytest

from benchmarks.serving_stack import NOW, build_stack
from components.config import load_config
from components.features import open_store, start_redis
from components.processes import free_port
from components.request_logs import open_request_log

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory, bundles):
    server = {"redis": start_redis(free_port())}
    with pytest.MonkeyPatch.context() as env:
        env.setenv(load_config().features.redis_password_env, server["redis"].password)  # the API inherits it
        try:
            stack = build_stack(tmp_path_factory.mktemp("api_redis"), bundles["a"],
                                overrides={"features.online_store": "redis",
                                           "features.redis_connection": server["redis"].address})
        except BaseException:
            server["redis"].stop()
            raise
        try:
            yield stack, server
        finally:
            stack.stop()
            server["redis"].stop()


def test_feature_store_down_degrades_then_recovers(redis_stack):
    stack, server = redis_stack
    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.auth_headers()) as http:
        healthy = http.post("/recommend", json={"user_id": 4, "k": 5}).json()
        assert not healthy["degraded"] and healthy["model_version"] == "test-0"

        server["redis"].stop()
        for _ in range(3):
            resp = http.post("/recommend", json={"user_id": 4, "k": 5, "filters": {"genres": ["Drama"]}})
            assert resp.status_code == 200, resp.text
            down = resp.json()
            assert down["timings_ms"]["feast"] < 3000, "a dead store must not stall requests (deadline 1 s)"
            assert down["degraded"] and down["model_version"] == "popularity"
            assert any("feature store" in r for r in down["reasons"])
            assert server["redis"].password not in resp.text  # the reasons name the store, never its password
            assert len(down["items"]) == 5 and all("Drama" in i["genres"] for i in down["items"])
        assert http.get("/readyz").status_code == 200  # it still answers (popularity): it stays in the Service
        details = http.get("/healthz/details").json()
        assert details["ready"] and not details["feature_store"]["up"] and details["triton"]["up"]
        assert server["redis"].password not in json.dumps(details)
        resp = http.post("/interactions", json={"user_id": 4, "item_id": healthy["items"][0]["item_id"]})
        assert resp.status_code == 200 and resp.json()["logged"] and not resp.json()["pushed"]
        logged = open_request_log(stack.config.serving.request_log).interactions_frame()
        assert (logged.user_id == 4).sum() == 1

        old = server["redis"]
        server["redis"] = start_redis(old.port, old.password)  # an empty Redis: load the features again
        open_store(stack.config).materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=NOW)
        for _ in range(100):
            again = http.post("/recommend", json={"user_id": 4, "k": 5}).json()
            if not again["degraded"]:
                break
            time.sleep(0.1)
        assert not again["degraded"] and again["items"] == healthy["items"]
        assert http.get("/readyz").status_code == 200 and http.get("/healthz/details").json()["feature_store"]["up"]
