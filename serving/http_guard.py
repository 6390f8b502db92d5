"""HTTP guards in front of the API: one pure-ASGI middleware that checks every request before BentoML sees it.

- **Headers**: more than `MAX_HEADER_BYTES` of them is a 431 naming the largest; a repeated `Content-Type` or
  `Content-Length` is a 400 that names the header (a duplicate must not let one layer read JSON and another
  multipart); the JSON routes take exactly one `Content-Type: application/json` (optionally `; charset=utf-8`),
  anything else is a 415.
- **Body size**: at most `max_body_bytes`, checked on `Content-Length` and again while the body streams in (a
  chunked body has no length): 413 naming the limit.
- **Deadline**: the whole request, body read and answer, gets `request_timeout_s`; a body that does not arrive in
  time (a stalled or trickling client) is a 408, a handler that has not answered is a 503 (the handler's thread
  finishes on its own; its late answer is dropped).
- **Error bodies**: every 4xx/5xx body is rewritten to `{"error": ..., "fields": [{"loc": ..., "msg": ...}]}`
  (pydantic's validation details reduced to where and what, never the input), each text truncated and the whole
  body at most `MAX_ERROR_BYTES`.

The guard reads the (bounded) body itself and replays it to the application, so nothing behind it can read an
oversized or late body.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("recsys.api")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_ERROR_BYTES = 2048  # an error body never exceeds this
MAX_TEXT_CHARS = 200  # one message or location in an error body
MAX_HEADER_BYTES = 16 * 1024  # all request headers together (names and values)
JSON_ROUTES = ("/recommend", "/interactions")
UNIQUE_HEADERS = (b"content-type", b"content-length")


def _clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def bounded_error(status: int, body: bytes, method: str = "", path: str = "") -> bytes:
    """An error body of at most MAX_ERROR_BYTES: {"error": ..., "fields": [{"loc": "a.b", "msg": ...}]}.

    A pydantic validation body (BentoML's `{"error", "detail": [...]}`) keeps only each field's location and
    message; a plain-text body (the router's 404/405) says which route or method; no input is echoed back."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    fields: list[dict[str, str]] = []
    extra: dict[str, Any] = {}  # short scalar members of an error body (e.g. which scope was missing)
    if isinstance(data, dict) and isinstance(data.get("detail"), list):
        for item in data["detail"]:
            if not isinstance(item, dict):
                continue
            loc = ".".join(str(part) for part in item.get("loc") or ()) or "body"
            fields.append({"loc": _clip(loc, 100), "msg": _clip(str(item.get("msg", "")))})
        error = "invalid request body: " + ", ".join(dict.fromkeys(f["loc"] for f in fields))
    elif isinstance(data, dict) and isinstance(data.get("error"), str):
        error = data["error"]
        fields = [f for f in data.get("fields", []) if isinstance(f, dict)]
        extra = {key: _clip(value) if isinstance(value, str) else value for key, value in data.items()
                 if key not in ("error", "fields") and isinstance(value, str | int | float | bool) and len(key) < 40}
    elif status == 404:
        error = f"no route {method} {_clip(path, 100)}"
    elif status == 405:
        error = f"method {_clip(method, 20)} not allowed on {_clip(path, 100)}"
    else:
        error = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    out: dict[str, Any] = {"error": _clip(error, 400), **dict(list(extra.items())[:8])}
    if fields:
        out["fields"] = []
        for n, field in enumerate(fields):
            out["fields"].append({"loc": _clip(str(field.get("loc", "")), 100),
                                  "msg": _clip(str(field.get("msg", "")))})
            if len(_json_bytes(out)) > MAX_ERROR_BYTES - 40:
                out["fields"].pop()
                out["more_fields"] = len(fields) - n
                break
    encoded = _json_bytes(out)
    return encoded if len(encoded) <= MAX_ERROR_BYTES else _json_bytes({"error": _clip(error, 100)})


async def send_error(send: Send, status: int, message: str, close: bool = False) -> None:
    """A JSON error response; close=True also asks the server to close the connection (the body was not read)."""
    body = bounded_error(status, _json_bytes({"error": message}))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def content_type_problem(values: list[bytes]) -> str | None:
    """Why these Content-Type header values are not one `application/json` (optionally charset=utf-8); None if
    they are."""
    if not values:
        return "Content-Type header missing: send Content-Type: application/json"
    media, *params = (part.strip() for part in values[0].decode("latin-1").split(";"))
    if media.lower() != "application/json":
        return f"Content-Type must be application/json, got {_clip(media, 60)!r}"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"Content-Type parameter {_clip(param, 60)!r} not accepted: only charset=utf-8"
    return None


class _ErrorBodies:
    """The `send` of one request: error responses are buffered and rewritten by `bounded_error`; once `closed`
    is set nothing more goes out (an answer that comes after the deadline)."""

    def __init__(self, send: Send, method: str, path: str) -> None:
        self.send, self.method, self.path = send, method, path
        self._start: Message | None = None
        self._chunks: list[bytes] = []
        self.started = asyncio.Event()  # a response start went out (or is buffered): the request has its answer
        self.closed = False

    async def __call__(self, message: Message) -> None:
        if self.closed:
            return
        if message["type"] == "http.response.start":
            self.started.set()
            if message["status"] >= 400 and self.method != "HEAD":
                self._start = message
                return
        elif message["type"] == "http.response.body" and self._start is not None:
            self._chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await self._flush()
            return
        await self.send(message)

    async def _flush(self) -> None:
        start, self._start = self._start, None
        body = bounded_error(start["status"], b"".join(self._chunks)[: 64 * 1024], self.method, self.path)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.send({**start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Pure-ASGI middleware: duplicate and wrong headers, body size, deadline, bounded error bodies (see the
    module docstring). `on_reject(path, status)` is called for each request the guard itself refuses."""

    def __init__(self, app: App, max_body_bytes: int, request_timeout_s: float,
                 json_routes: tuple[str, ...] = JSON_ROUTES,
                 on_reject: Callable[[str, int], None] | None = None) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.request_timeout_s = float(request_timeout_s)
        self.json_routes = tuple(json_routes)
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_s
        method, path = scope.get("method", ""), scope.get("path", "")
        out = _ErrorBodies(send, method, path)
        problem = self._header_problem(scope)
        if problem is not None:
            await self._reject(out, path, *problem)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                await self._reject(out, path, 408, f"request body not received within {self.request_timeout_s:g} s",
                                   close=True)
                return
            if message["type"] == "http.disconnect":
                return  # the client is gone: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                await self._reject(out, path, 413, f"request body over the limit of {self.max_body_bytes} bytes "
                                   "(serving.max_body_bytes)", close=True)
                return
        await self._answer(scope, _replay(b"".join(chunks), receive), out, deadline)

    def _header_problem(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) when the headers alone decide the answer."""
        seen: dict[bytes, list[bytes]] = {}
        headers = scope.get("headers") or []
        for name, value in headers:
            if name.lower() in UNIQUE_HEADERS:
                seen.setdefault(name.lower(), []).append(value)
        if sum(len(name) + len(value) for name, value in headers) > MAX_HEADER_BYTES:
            largest = max(headers, key=lambda header: len(header[0]) + len(header[1]))[0]
            return 431, (f"request headers over {MAX_HEADER_BYTES} bytes; the largest is "
                         f"{_clip(largest.decode('latin-1'), 60)}")
        for name, values in seen.items():
            if len(values) > 1:
                title = name.decode().title()
                return 400, f"{title} header given {len(values)} times: send it once"
        if b"content-length" in seen:
            raw = seen[b"content-length"][0].strip()
            if not raw.isdigit():
                return 400, "Content-Length header is not a non-negative integer"
            if int(raw) > self.max_body_bytes:
                return 413, (f"request body over the limit of {self.max_body_bytes} bytes (Content-Length: "
                             f"{_clip(raw.decode(), 30)}; serving.max_body_bytes)")
        if scope.get("path") in self.json_routes and scope.get("method") == "POST":
            problem = content_type_problem(seen.get(b"content-type", []))
            if problem is not None:
                return 415, problem
        return None

    async def _reject(self, out: _ErrorBodies, path: str, status: int, message: str, close: bool = False) -> None:
        if self.on_reject is not None:
            self.on_reject(path, status)
        await send_error(out, status, message, close=close)

    async def _answer(self, scope: Scope, receive: Receive, out: _ErrorBodies, deadline: float) -> None:
        """Run the application until it has answered; a 503 if it has not started an answer by the deadline."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(self.app(scope, receive, out))
        started = asyncio.ensure_future(out.started.wait())
        try:
            await asyncio.wait([task, started], timeout=max(deadline - loop.time(), 0.0),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        if out.started.is_set():
            await task  # the answer is under way: let it finish
            return
        path = scope.get("path", "")
        if task.done():  # returned or failed without answering
            if not task.cancelled() and task.exception() is not None:
                log.error("%s %s failed: %r", scope.get("method"), path, task.exception())
            await self._reject(out, path, 500, "the request failed without an answer; see the server log")
            return
        out.closed = True  # the handler's answer, if it ever comes, is dropped
        task.cancel()
        task.add_done_callback(_discard)
        log.warning("%s %s: no answer within %g s", scope.get("method"), path, self.request_timeout_s)
        await self._reject(_ErrorBodies(out.send, out.method, path), path, 503,
                           f"no answer within {self.request_timeout_s:g} s (serving.request_timeout_s); retry later")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body over once, then waits for the client's disconnect."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _discard(task: asyncio.Future) -> None:
    """Retrieve a cancelled handler's outcome so asyncio does not warn about it."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("a request past its deadline failed later: %s", task.exception())
