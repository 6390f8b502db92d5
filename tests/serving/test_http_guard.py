"""RequestGuard in front of a small real ASGI app served by uvicorn (the paths the API's own handlers cannot be made
to take on purpose: a handler past the deadline, an app that never answers), and its pure helpers."""

import asyncio
import json
import threading
import time

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from components.processes import free_port
from serving.http_guard import MAX_ERROR_BYTES, RequestGuard, bounded_error, content_type_problem

DEADLINE_S = 1.0
LATE: list[str] = []  # handlers that finished after their request had been answered


async def slow(request: Request) -> JSONResponse:
    await asyncio.sleep(DEADLINE_S * 3)
    LATE.append("slow")
    return JSONResponse({"late": True})


def blocking(request: Request) -> JSONResponse:  # a sync endpoint: runs in a thread that cannot be cancelled
    time.sleep(DEADLINE_S * 2)
    LATE.append("blocking")
    return JSONResponse({"late": True})


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


class NoAnswer:
    """An ASGI app that returns without answering."""

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        return None


@pytest.fixture(scope="module")
def url():
    app = Starlette(routes=[Route("/slow", slow), Route("/blocking", blocking), Route("/echo", echo, methods=["POST"]),
                            Route("/none", NoAnswer())])
    guarded = RequestGuard(app, max_body_bytes=1024, request_timeout_s=DEADLINE_S, json_routes=("/echo",))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(guarded, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("path", ["/slow", "/blocking"])
def test_a_handler_past_the_deadline_is_a_503_and_its_late_answer_is_dropped(url, path):
    t0 = time.monotonic()
    resp = httpx.get(f"{url}{path}", timeout=10)
    assert resp.status_code == 503 and time.monotonic() - t0 < DEADLINE_S + 0.5
    assert "serving.request_timeout_s" in resp.json()["error"]
    ok = httpx.post(f"{url}/echo", content=b'{"a": 1}', headers={"Content-Type": "application/json"},
                    timeout=10)  # the server answers others meanwhile
    assert ok.status_code == 200 and ok.json() == {"bytes": 8}
    time.sleep(DEADLINE_S * 3.2)  # the handler finishes; its answer goes nowhere and nothing breaks
    if path == "/slow":
        assert "slow" not in LATE  # the coroutine was cancelled at the deadline
    else:
        assert "blocking" in LATE  # a thread cannot be cancelled: it ran to its end, its answer was dropped
    assert httpx.post(f"{url}/echo", json={}, timeout=10).status_code == 200


def test_an_app_that_never_answers_is_a_500_with_a_json_body(url):
    resp = httpx.get(f"{url}/none", timeout=10)
    assert resp.status_code == 500 and "without an answer" in resp.json()["error"]


def test_body_limits_and_content_type(url):
    assert httpx.post(f"{url}/echo", content=b"x" * 1025, headers={"Content-Type": "application/json"},
                      timeout=10).status_code == 413

    def chunks():
        for _ in range(5):
            yield b"x" * 300

    resp = httpx.post(f"{url}/echo", content=chunks(), headers={"Content-Type": "application/json"}, timeout=10)
    assert resp.status_code == 413 and "1024 bytes" in resp.json()["error"]  # chunked: no Content-Length
    resp = httpx.post(f"{url}/echo", content=b"{}", headers={"Content-Type": "text/json"}, timeout=10)
    assert resp.status_code == 415 and "Content-Type" in resp.json()["error"]
    resp = httpx.get(f"{url}/missing", timeout=10)
    assert resp.status_code == 404 and resp.json() == {"error": "no route GET /missing"}


def test_validation_errors_keep_where_and_what_never_the_input():
    detail = [{"type": "int_type", "loc": ["filters", "genres", 3], "msg": "Input should be a valid integer",
               "input": "SECRET" * 100, "url": "https://errors.pydantic.dev"}]
    body = json.loads(bounded_error(400, json.dumps({"error": "1 validation error", "detail": detail}).encode()))
    assert body == {"error": "invalid request body: filters.genres.3",
                    "fields": [{"loc": "filters.genres.3", "msg": "Input should be a valid integer"}]}


def test_error_bodies_are_bounded():
    many = [{"loc": [f"field_{i}" + "x" * 500], "msg": "m" * 1000} for i in range(500)]
    out = bounded_error(400, json.dumps({"detail": many}).encode())
    body = json.loads(out)
    assert len(out) <= MAX_ERROR_BYTES and body["more_fields"] > 400 and len(body["fields"]) >= 1
    assert all(len(f["loc"]) <= 100 and len(f["msg"]) <= 200 for f in body["fields"])
    assert len(bounded_error(500, b"t" * 100_000)) <= MAX_ERROR_BYTES
    auth = json.loads(bounded_error(403, json.dumps({"error": "needs scope", "reason": "insufficient_scope",
                                                     "required_scope": "admin", "nested": {"x": 1}}).encode()))
    assert auth == {"error": "needs scope", "reason": "insufficient_scope", "required_scope": "admin"}
    assert json.loads(bounded_error(405, b"Method Not Allowed", "PUT", "/recommend")) == {
        "error": "method PUT not allowed on /recommend"}


@pytest.mark.parametrize(("values", "problem"), [
    ([b"application/json"], None),
    ([b"Application/JSON; charset=UTF-8"], None),
    ([b'application/json; charset="utf-8"'], None),
    ([], "missing"),
    ([b"application/json; charset=latin-1"], "charset=latin-1"),
    ([b"application/json; boundary=x"], "boundary=x"),
    ([b"multipart/form-data"], "multipart/form-data"),
    ([b"application/jsonx"], "application/jsonx"),
])
def test_content_type_rule(values, problem):
    found = content_type_problem(values)
    assert found is None if problem is None else problem in found
