"""The recommendation API end to end: real BentoML server, real Triton, real Feast (one stack per module):
ranking, cold start, filters, real-time updates, bad input (by hand and by schemathesis), a kill -9 of the
server with the request log intact, and Triton going down and coming back."""

import json
import math
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from benchmarks.serving_stack import build_stack
from components.config import write_config
from components.ensemble import EnsembleReference
from components.processes import free_port
from components.request_logs import open_request_log
from serving.api_server import api_dir, api_keys_file, api_token, sample_curl, sample_request, token_file
from serving.auth import create_key, revoke_key
from serving.triton_client import encode_profile

pytestmark = pytest.mark.integration
LAST_N = 8  # features.last_n_items of the stack
ACKED: list[str] = []  # request ids answered with 200 in this module


@pytest.fixture(scope="module")
def stack(tmp_path_factory, bundles, issuer):
    # the API worker pinned to one CPU (serving.pin_workers): every test of this module runs against that layout
    stack = build_stack(tmp_path_factory.mktemp("api"), bundles["a"],
                        overrides={**issuer.config_overrides(), "serving.pin_workers": True})
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def http(stack):
    """A client with the admin token of the API's first start."""
    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.auth_headers()) as client:
        yield client


@pytest.fixture(scope="module")
def reference(stack):
    return EnsembleReference(stack.bundle)


def recommend(http, **body) -> dict:
    resp = http.post("/recommend", json=body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    ACKED.append(data["request_id"])
    return data


def user_state(stack, user_id: int) -> tuple[list[int], dict]:
    """The user's last LAST_N items (oldest -> newest) and profile, straight from the canonical tables."""
    inter = stack.tables["interactions"]
    mine = inter[inter.user_id == user_id].sort_values(["event_timestamp", "item_id"], kind="stable")
    user = stack.tables["users"].set_index("user_id").loc[user_id]
    return mine.item_id.tolist()[-LAST_N:], {"age": int(user.age), "gender": user.gender,
                                              "occupation": user.occupation}


def expected(reference, history, profile, exclude, k):
    codes = encode_profile(reference.manifest, profile)
    return reference.recommend(history, codes, exclude, k)


def allowed_cpus(pid: int) -> dict[int, str]:
    """Each thread of a process -> the CPUs it may run on (Linux's Cpus_allowed_list)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        out[int(task.name)] = next(line.split(":", 1)[1].strip() for line in status.splitlines()
                                   if line.startswith("Cpus_allowed_list:"))
    return out


def test_a_pinned_worker_runs_every_thread_on_one_cpu(stack, http):
    """serving.pin_workers: the worker's threads, the engine's and gRPC's started after the pin included, may run
    on one CPU only, the first of those the server may use (worker 1)."""
    assert http.post("/recommend", json={"user_id": 1, "k": 5}).status_code == 200  # request threads now exist
    first_cpu = str(min(os.sched_getaffinity(stack.api_pid)))
    for pid in stack.worker_pids() or [stack.api_pid]:
        threads = allowed_cpus(pid)
        assert len(threads) > 4, threads  # event loop, request, Feast, gRPC and watcher threads
        assert set(threads.values()) == {first_cpu}, threads


def test_health_ready_and_openapi_need_no_credentials(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as anonymous:
        for path in ("/healthz", "/readyz", "/livez"):
            assert anonymous.get(path).status_code == 200, path
        paths = anonymous.get("/docs.json").json()["paths"]
    assert "/recommend" in paths and "/interactions" in paths


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_known_user_gets_the_model_ranking(http, stack, reference, exclude_seen):
    history, profile = user_state(stack, 3)
    data = recommend(http, user_id=3, k=7, exclude_seen=exclude_seen)
    want_ids, want_scores = expected(reference, history, profile, history if exclude_seen else [], 7)
    assert not data["degraded"] and not data["cold_start"], data["reasons"]
    assert data["model_version"] == "test-0"
    assert [i["item_id"] for i in data["items"]] == want_ids.tolist()
    np.testing.assert_allclose([i["score"] for i in data["items"]], want_scores, rtol=1e-4, atol=1e-4)
    assert [i["rank"] for i in data["items"]] == list(range(1, 8))
    if exclude_seen:
        assert not set(history) & {i["item_id"] for i in data["items"]}
    items = stack.tables["items"].set_index("item_id")
    for item in data["items"]:
        assert item["title"] == items.loc[item["item_id"], "title"]
        assert item["genres"] == items.loc[item["item_id"], "genres"].split("|")
        assert item["source"] == "model"
    assert set(data["timings_ms"]) >= {"feast", "triton", "log", "service", "total"}


def test_concurrent_requests_get_the_answers_they_get_alone(http, stack, reference):
    """Requests that arrive together are answered in batches (serving.request_batcher; one feature read, their
    Triton calls in flight at once, one log commit): each gets the ranking of its own user, as when alone."""
    users = sorted(int(u) for u in stack.tables["users"].user_id)[:24]
    alone = {u: recommend(http, user_id=u, k=6) for u in users}

    def ask(user_id: int) -> dict:
        with httpx.Client(base_url=stack.url, timeout=30, headers=stack.auth_headers()) as client:
            return client.post("/recommend", json={"user_id": user_id, "k": 6}).json()

    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        together = dict(zip(users, pool.map(ask, users), strict=True))
    for user in users:
        history, profile = user_state(stack, user)
        want_ids, want_scores = expected(reference, history, profile, history, 6)
        for data in (alone[user], together[user]):
            assert not data["degraded"], data["reasons"]
            assert [i["item_id"] for i in data["items"]] == want_ids.tolist()
            np.testing.assert_allclose([i["score"] for i in data["items"]], want_scores, rtol=1e-4, atol=1e-4)
    logged = set(open_request_log(stack.config.serving.request_log).requests_frame().request_id)
    assert {together[u]["request_id"] for u in users} <= logged


def test_explanation_names_the_closest_recent_item(http, stack):
    history, _ = user_state(stack, 5)
    data = recommend(http, user_id=5, k=4)
    ids = np.load(stack.bundle / "item_ids.npy")
    emb = np.load(stack.bundle / "item_embeddings.npy")
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    row = {int(i): r for r, i in enumerate(ids)}
    for item in data["items"]:
        sims = [float(unit[row[item["item_id"]]] @ unit[row[h]]) for h in history]
        closest = history[int(np.argmax(sims))]
        assert item["closest_recent_item_id"] == closest
        assert f"Movie {closest}" in item["explanation"] and f"{max(sims):.2f}" in item["explanation"]


def test_unknown_user_cold_start(http, stack, reference):
    with_profile = recommend(http, user_id=424242, k=5, profile={"age": 30, "gender": "F", "occupation": "doctor"})
    want_ids, _ = expected(reference, [], {"age": 30, "gender": "F", "occupation": "doctor"}, [], 5)
    assert with_profile["cold_start"] and not with_profile["degraded"]
    assert with_profile["model_version"] == "test-0"
    assert [i["item_id"] for i in with_profile["items"]] == want_ids.tolist()
    other = recommend(http, user_id=424242, k=5, profile={"age": 60, "gender": "M", "occupation": "artist"})
    assert [i["item_id"] for i in other["items"]] != want_ids.tolist(), "the profile must change the ranking"

    anonymous = recommend(http, user_id=424243, k=5)
    assert anonymous["cold_start"] and not anonymous["degraded"]
    assert anonymous["model_version"] == "popularity"
    inter = stack.tables["interactions"]
    recent = inter[inter.event_timestamp > inter.event_timestamp.max() - pd.Timedelta(days=30)]
    counts = recent.item_id.value_counts()
    got = [i["item_id"] for i in anonymous["items"]]
    assert [counts.get(i, 0) for i in got] == sorted(counts.to_numpy(), reverse=True)[:5]
    assert all(i["source"] == "popularity" for i in anonymous["items"])


@pytest.mark.parametrize("filters", [{"genres": ["Horror"]}, {"year_min": 1990, "year_max": 1995},
                                     {"genres": ["Sci-Fi", "Romance"], "year_min": 1970}])
def test_filters_keep_only_matching_items(http, stack, reference, filters):
    history, profile = user_state(stack, 7)
    data = recommend(http, user_id=7, k=10, filters=filters)
    items = stack.tables["items"].set_index("item_id")

    def passes(item_id: int) -> bool:
        row = items.loc[item_id]
        genres_ok = not filters.get("genres") or bool(set(filters["genres"]) & set(row.genres.split("|")))
        return (genres_ok and row.year >= filters.get("year_min", -math.inf)
                and row.year <= filters.get("year_max", math.inf))

    assert len(data["items"]) == 10 and not data["degraded"]
    assert all(passes(i["item_id"]) for i in data["items"])
    full, _ = expected(reference, history, profile, history, len(items))
    want = [int(i) for i in full if passes(int(i))]
    model_items = [i["item_id"] for i in data["items"] if i["source"] == "model"]
    assert len(model_items) >= 1 and model_items == want[: len(model_items)]


def test_interaction_is_visible_in_the_next_request(http, stack, reference):
    history, profile = user_state(stack, 9)
    first = recommend(http, user_id=9, k=5)
    new_item = first["items"][0]["item_id"]
    resp = http.post("/interactions", json={"user_id": 9, "item_id": new_item, "rating": 5.0})
    assert resp.status_code == 200, resp.text
    assert resp.json()["pushed"] and resp.json()["recent_item_ids"][-1] == new_item
    after = recommend(http, user_id=9, k=5)
    new_history = (history + [new_item])[-LAST_N:]
    want_ids, _ = expected(reference, new_history, profile, new_history, 5)
    assert new_item not in [i["item_id"] for i in after["items"]]
    assert [i["item_id"] for i in after["items"]] == want_ids.tolist()
    logged = open_request_log(stack.config.serving.request_log).interactions_frame()
    assert ((logged.user_id == 9) & (logged.item_id == new_item)).sum() == 1


@pytest.mark.parametrize(("body", "field"), [
    ({"user_id": 1, "k": 0}, "k"),
    ({"user_id": 1, "k": 101}, "k"),
    ({"user_id": 1, "k": "ten"}, "k"),
    ({"k": 5}, "user_id"),
    ({"user_id": "abc"}, "user_id"),
    ({"user_id": 1, "colour": "red"}, "colour"),
    ({"user_id": 1, "filters": {"genre": ["Drama"]}}, "genre"),
    ({"user_id": 1, "filters": {"year_min": 2000, "year_max": 1990}}, "year_min"),
    ({"user_id": 1, "exclude_seen": "perhaps"}, "exclude_seen"),
    ({"user_id": 1, "profile": {"age": -3}}, "age"),
])
def test_malformed_recommend_bodies_are_4xx_naming_the_field(http, body, field):
    resp = http.post("/recommend", json=body)
    assert 400 <= resp.status_code < 500, resp.text
    assert field in resp.text


def test_malformed_json_and_interactions_are_4xx(http):
    resp = http.post("/recommend", content=b"{not json", headers={"Content-Type": "application/json"})
    assert 400 <= resp.status_code < 500
    resp = http.post("/interactions", json={"user_id": 1, "item_id": 2, "stars": 5})
    assert resp.status_code == 400 and "stars" in resp.text
    resp = http.post("/interactions", json={"user_id": 1})
    assert resp.status_code == 400 and "item_id" in resp.text


def test_first_start_wrote_one_admin_token_and_no_secret_elsewhere(stack):
    token, tokens = api_token(stack.config), token_file(stack.config)
    assert oct(tokens.stat().st_mode & 0o777) == "0o600"
    assert tokens.parent == api_keys_file(stack.config).parent
    leaks = [str(p) for p in api_dir(stack.config).rglob("*") if p.is_file() and p != tokens
             and token.encode() in p.read_bytes()]  # keys file (hashes), server log, config dump, metrics
    assert not leaks


def test_callers_without_credentials_or_scope_are_refused(stack, http):
    body = {"user_id": 1, "k": 3}
    with httpx.Client(base_url=stack.url, timeout=30) as anonymous:
        resp = anonymous.post("/recommend", json=body)
        assert resp.status_code == 401 and "missing Authorization header" in resp.json()["error"]
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.post("/interactions", json={"user_id": 1, "item_id": 2}).status_code == 401
        assert anonymous.get("/metrics").status_code == 401
        resp = anonymous.post("/recommend", json=body, headers={"Authorization": "Bearer rsk_0123456789ab_guess"})
        assert resp.status_code == 401 and resp.json()["reason"] == "unknown_key"
        resp = anonymous.post("/recommend", json=body, headers={"Authorization": "Token abc"})
        assert resp.status_code == 401 and resp.json()["reason"] == "malformed_header"

        record, token = create_key(api_keys_file(stack.config), "web front end", ["recommend"])  # API running
        limited = {"Authorization": f"Bearer {token}"}
        resp = anonymous.post("/recommend", json=body, headers=limited)
        assert resp.status_code == 200, resp.text  # works at once, no restart
        ACKED.append(resp.json()["request_id"])
        resp = anonymous.post("/interactions", json={"user_id": 1, "item_id": 2}, headers=limited)
        assert resp.status_code == 403 and "interactions:write" in resp.json()["error"]
        assert 'scope="interactions:write"' in resp.headers["www-authenticate"]
        assert anonymous.get("/metrics", headers=limited).status_code == 403
        assert http.get("/metrics").status_code == 200  # admin

        revoke_key(api_keys_file(stack.config), record.id)
        resp = anonymous.post("/recommend", json=body, headers=limited)
        assert resp.status_code == 401 and resp.json()["reason"] == "unknown_key"  # refused at once


def test_history_only_to_callers_allowed_to_read_it(stack, http, issuer):
    """Explanations naming recent items, closest_recent_item_id and recent_item_ids: admin, history:read, or a
    JWT for the user itself; anyone else gets the ranking without the history."""
    keys = api_keys_file(stack.config)
    _, ranking_only = create_key(keys, "ranking only", ["recommend"])
    _, reader = create_key(keys, "support desk", ["recommend", "history:read"])
    callers = {"admin": stack.auth_headers(), "history:read": {"Authorization": f"Bearer {reader}"},
               "own jwt": {"Authorization": f"Bearer {issuer.token(sub='13', scope='recommend interactions:write')}"},
               "recommend key": {"Authorization": f"Bearer {ranking_only}"},
               "other jwt": {"Authorization": f"Bearer {issuer.token(sub='14', scope='recommend interactions:write')}"}}
    answers = {}
    for name, headers in callers.items():
        resp = http.post("/recommend", json={"user_id": 13, "k": 4}, headers=headers)
        assert resp.status_code == 200, (name, resp.text)
        answers[name] = resp.json()["items"]
        ACKED.append(resp.json()["request_id"])
    for name in ("admin", "history:read", "own jwt"):
        assert all(i["closest_recent_item_id"] is not None and "recent 'Movie" in i["explanation"]
                   for i in answers[name]), name
    for name in ("recommend key", "other jwt"):
        assert all(i["closest_recent_item_id"] is None and "Movie" not in i["explanation"] for i in answers[name])
        assert [i["item_id"] for i in answers[name]] == [i["item_id"] for i in answers["admin"]]  # same ranking

    item = answers["admin"][0]["item_id"]
    own = http.post("/interactions", json={"user_id": 14, "item_id": item}, headers=callers["other jwt"]).json()
    assert own["pushed"] and own["recent_item_ids"][-1] == item  # sub 14 writes for user 14: sees its history
    foreign = http.post("/interactions", json={"user_id": 14, "item_id": item}, headers=callers["own jwt"]).json()
    assert foreign["pushed"] and foreign["recent_item_ids"] == []


def test_sample_curl_line_works(stack):
    body = sample_request(stack.config, k=3)
    (attribute, low), = body["filters"].items()  # the planted items' year: a declared range filter
    assert attribute == "year_min"
    assert api_token(stack.config) not in sample_curl(stack.config, body)  # the line reads the token file
    proc = subprocess.run(sample_curl(stack.config, body), shell=True, capture_output=True, text=True, timeout=60,
                          check=True)  # noqa: S602
    data = json.loads(proc.stdout)
    assert data["user_id"] == body["user_id"] and len(data["items"]) == 3
    assert all(i["year"] >= low for i in data["items"])


def test_cli_serve_api_detached_and_stop(stack, tmp_path):
    """`recsys serve api --detach` on a second port of the same stack, then `recsys serve api-stop`."""
    cfg = write_config(stack.config, tmp_path / "config.yaml")
    port = free_port()
    recsys = [str(Path(sys.executable).parent / "recsys"), "--config", str(cfg), "--set", f"serving.api_port={port}"]
    env = {**os.environ, "COLUMNS": "200"}
    started = subprocess.run([*recsys, "serve", "api", "--detach"], capture_output=True, text=True, timeout=300,
                             env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"127.0.0.1:{port}/recommend" in started.stderr  # the sample curl line
    try:
        resp = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": 1, "k": 2}, timeout=30,
                          headers=stack.auth_headers())  # the same keys file as the first server
        assert resp.status_code == 200 and len(resp.json()["items"]) == 2
    finally:
        stopped = subprocess.run([*recsys, "serve", "api-stop"], capture_output=True, text=True, timeout=120, env=env)
    assert stopped.returncode == 0 and "API stopped" in stopped.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_every_answered_request_is_logged_and_counted(http, stack):
    frame = open_request_log(stack.config.serving.request_log).requests_frame()
    assert set(ACKED) <= set(frame.request_id)
    row = frame.set_index("request_id").loc[ACKED[0]]
    assert row.user_id == 3 and row.model_version == "test-0" and len(row.item_ids) == 7
    metrics = http.get("/metrics").text
    assert 'recsys_api_requests_total{endpoint="recommend",outcome="ok"}' in metrics
    assert "recsys_api_stage_seconds_bucket" in metrics and "recsys_api_fallbacks_total" in metrics


def test_api_routes_are_not_traced_unless_asked(http, stack, tmp_path):
    """serving.trace_requests false (the default): BentoML's OpenTelemetry middleware leaves the JSON routes out
    (a span per request costs CPU even with no exporter); true: it traces them too. Read from the service as
    `bentoml serve` imports it with each config."""
    assert stack.config.serving.trace_requests is False
    assert http.post("/recommend", json={"user_id": 3, "k": 3}).status_code == 200
    script = "from serving.service import RecommendationService as S; print(S.config['tracing']['excluded_urls'])"
    excluded = {}
    for trace in (False, True):
        config = stack.config.model_copy(deep=True)
        config.serving.trace_requests = trace
        env = {**os.environ, "RECSYS_CONFIG": str(write_config(config, tmp_path / f"trace_{trace}.yaml"))}
        excluded[trace] = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                         check=True, timeout=120).stdout.strip()
    assert excluded == {False: "['/recommend', '/interactions']", True: "[]"}


def test_schemathesis_finds_no_server_error(stack, tmp_path):
    junit = tmp_path / "schemathesis.xml"
    before = len(open_request_log(stack.config.serving.request_log).requests_frame())
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{stack.url}/docs.json",
           "--checks", "not_a_server_error", "--max-examples", "30", "--seed", "7", "--workers", "1",
           "--phases", "examples,coverage,fuzzing", "--include-path-regex", "^/(recommend|interactions)$",
           "--request-timeout", "30", "-H", f"Authorization: {stack.auth_headers()['Authorization']}",
           "--report", "junit", "--report-junit-path", str(junit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    cases = ET.parse(junit).getroot().iter("testcase")
    assert {c.get("name") for c in cases} >= {"POST /recommend", "POST /interactions"}
    after = len(open_request_log(stack.config.serving.request_log).requests_frame())
    assert after - before >= 20, "schemathesis must have sent valid requests too"
    assert httpx.get(f"{stack.url}/readyz", timeout=10).status_code == 200


def test_log_keeps_every_acknowledged_request_after_kill_9(stack):
    acked: list[str] = []
    stop = threading.Event()

    def client(user_id: int) -> None:
        with httpx.Client(base_url=stack.url, timeout=10, headers=stack.auth_headers()) as http:
            while not stop.is_set():
                try:
                    resp = http.post("/recommend", json={"user_id": user_id, "k": 5})
                except httpx.HTTPError:
                    return  # the server is gone
                if resp.status_code == 200:
                    acked.append(resp.json()["request_id"])

    threads = [threading.Thread(target=client, args=(user,)) for user in (1, 2, 3, 4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    stack.kill_api()  # SIGKILL to the server and its worker while requests are in flight
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(acked) >= 40
    log = open_request_log(stack.config.serving.request_log)
    frame = log.requests_frame()
    missing = set(acked) - set(frame.request_id)
    assert not missing, f"{len(missing)} acknowledged requests lost"
    recs = log.recommendations_frame()
    per_request = recs.groupby("request_id").size()
    assert all(per_request[r] == 5 for r in acked), "each logged request keeps all its ranked items"

    stack.start_api()  # restarts on the same log and goes on appending
    resp = httpx.post(f"{stack.url}/recommend", json={"user_id": 1, "k": 3}, timeout=30, headers=stack.auth_headers())
    assert resp.status_code == 200
    logged = open_request_log(stack.config.serving.request_log).requests_frame()
    assert resp.json()["request_id"] in set(logged.request_id)


def test_triton_down_degrades_then_recovers(http, stack):
    """Last in the module: kill Triton, get popularity answers (the API stays ready: it can answer, and a Triton
    outage must not take every replica out of the Service), restart it on the same port, recover."""
    history, _ = user_state(stack, 11)
    healthy = recommend(http, user_id=11, k=5)
    stack.triton.stop()
    for _ in range(3):
        down = recommend(http, user_id=11, k=5, filters={"year_min": 1960})
        assert down["degraded"] and down["model_version"] == "popularity"
        assert any("Triton" in r for r in down["reasons"])
        assert len(down["items"]) == 5 and not set(history) & {i["item_id"] for i in down["items"]}
        assert all(i["year"] >= 1960 for i in down["items"])
    assert http.get("/readyz").status_code == 200
    details = http.get("/healthz/details").json()
    assert details["ready"] and not details["triton"]["up"] and details["triton"]["error"]
    assert details["feature_store"]["up"] and details["request_log"]["writable"]
    stack.restart_triton()
    for _ in range(100):  # the watcher re-checks every second
        again = recommend(http, user_id=11, k=5)
        if not again["degraded"]:
            break
        time.sleep(0.1)
    assert not again["degraded"] and again["items"] == healthy["items"]
    assert http.get("/readyz").status_code == 200 and http.get("/healthz/details").json()["triton"]["up"]
    assert 'recsys_api_fallbacks_total{reason="degraded"}' in http.get("/metrics").text
