"""A catalogue of hostile and malformed requests against the real API (BentoML + Triton + Feast), sent over raw
sockets, with the SQLite and with the PostgreSQL request log.

For every case: no 5xx, an answer within a bound (nothing hangs), every rejection a 4xx whose body names the
field or header at fault and is at most 2 KiB; afterwards every acknowledged write (each 200 of /recommend and
/interactions) is in the request log, and nothing that was refused is.
"""

import json
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest

from benchmarks.serving_stack import Stack, build_stack
from components.request_logs import open_request_log
from serving.http_guard import MAX_ERROR_BYTES, MAX_HEADER_BYTES

pytestmark = pytest.mark.integration

TIMEOUT_S = 2.0  # serving.request_timeout_s of the stacks: a stalled body is answered after this
ANSWER_BOUND_S = 8.0  # every answer arrives within this (slow-loris cases: TIMEOUT_S + this)
MAX_BODY = 65536  # serving.max_body_bytes (the default)
PARSER = "parser"  # refused by the HTTP parser (httptools) before any application code: a fixed text body
ACKED: dict[str, dict] = {}  # backend -> {"requests": [request ids], "interactions": Counter((user, item))}


@dataclass(frozen=True)
class Case:
    """One hostile request: its raw bytes (or a callable that sends it) and what the answer must be."""

    name: str
    method: str = "POST"
    path: str = "/recommend"
    body: bytes | None = None  # None: no body, no Content-Length
    headers: tuple[str, ...] = ("Content-Type: application/json",)
    status: int | tuple[int, ...] = 400
    names: tuple[str, ...] = ()  # each must appear in the error body
    raw: Callable[["Stack"], tuple[bytes, float]] | None = None  # a custom exchange: (response, seconds)
    interaction: tuple | None = None  # (user, item) of an /interactions body, to check the log
    bound_s: float = ANSWER_BOUND_S
    notes: dict = field(default_factory=dict)


def j(value: object) -> bytes:
    return json.dumps(value).encode()


def rec(**body: object) -> bytes:
    return j({"user_id": 1, "k": 3, **body})


def inter(**body: object) -> bytes:
    return j({"user_id": 2, "item_id": 7, **body})


def stamp(delta: timedelta, fmt: str = "%Y-%m-%dT%H:%M:%S+00:00") -> str:
    return (datetime.now(UTC) + delta).strftime(fmt)


# ---------------------------------------------------------------------------------------------- raw HTTP
def _connect(stack: Stack, timeout: float) -> socket.socket:
    url = urlsplit(stack.url)
    return socket.create_connection((url.hostname, url.port), timeout=timeout)


def _read_response(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (every request says Connection: close)."""
    chunks = []
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError("no complete answer in time: the request hangs") from None
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        data = b"".join(chunks)
        head, sep, body = data.partition(b"\r\n\r\n")
        lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        if sep and lengths and len(body) >= int(lengths[0].split(b":")[1]):
            break  # complete (the server may keep the socket open a moment)
    return b"".join(chunks)


def exchange(stack: Stack, request: bytes, bound_s: float, stall_after: bool = False) -> tuple[bytes, float]:
    """Send raw bytes, read the answer; (response, seconds). stall_after: keep the socket open, send nothing more."""
    t0 = time.monotonic()
    with _connect(stack, bound_s) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed early (e.g. 413 before the whole body arrived)
        return _read_response(sock, t0 + bound_s), time.monotonic() - t0


def build_request(stack: Stack, case: Case) -> bytes:
    lines = [f"{case.method} {case.path} HTTP/1.1", f"Host: {urlsplit(stack.url).netloc}", "Connection: close",
             *(f"{k}: {v}" for k, v in stack.auth_headers().items()), *case.headers]
    if case.body is not None and not any(h.lower().startswith(("content-length:", "transfer-encoding:"))
                                         for h in case.headers):
        lines.append(f"Content-Length: {len(case.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (case.body or b"")


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


# -------------------------------------------------------------------------------------------- slow cases
def slow_body(stack: Stack) -> tuple[bytes, float]:
    """Slow-loris: headers promise 200 bytes, 10 arrive, then nothing."""
    head = build_request(stack, Case("x", headers=("Content-Type: application/json", "Content-Length: 200")))
    return exchange(stack, head + b'{"user_id"', TIMEOUT_S + ANSWER_BOUND_S)


def headers_then_stall(stack: Stack) -> tuple[bytes, float]:
    """Headers with a Content-Length, then not a byte of body."""
    head = build_request(stack, Case("x", headers=("Content-Type: application/json", "Content-Length: 30")))
    return exchange(stack, head, TIMEOUT_S + ANSWER_BOUND_S)


def trickle(stack: Stack) -> tuple[bytes, float]:
    """A body that arrives one byte every 0.3 s: over the deadline before it is complete."""
    body = rec()
    head = build_request(stack, Case("x", headers=("Content-Type: application/json",
                                                   f"Content-Length: {len(body)}")))
    t0 = time.monotonic()
    with _connect(stack, TIMEOUT_S + ANSWER_BOUND_S) as sock:
        sock.sendall(head)
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.3)
            if time.monotonic() - t0 > TIMEOUT_S + 1:
                break
        return _read_response(sock, t0 + TIMEOUT_S + ANSWER_BOUND_S), time.monotonic() - t0


def stalled_headers_block_nobody(stack: Stack) -> tuple[bytes, float]:
    """Half a request line and headers, then silence: other clients are still answered at once."""
    with _connect(stack, 30) as stalled:
        stalled.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Ty")
        case = Case("ok", body=rec())
        return exchange(stack, build_request(stack, case), ANSWER_BOUND_S)


def chunked(stack: Stack, total: int, chunk: int = 8192) -> tuple[bytes, float]:
    """A chunked body (no Content-Length) of `total` bytes: '{"user_id": 1, "pad": "xxxx..."}'."""
    body = b'{"user_id": 1, "k": 2}' if total <= 0 else b'{"user_id": 1, "pad": "' + b"x" * total + b'"}'
    head = build_request(stack, Case("x", headers=("Content-Type: application/json", "Transfer-Encoding: chunked")))
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + chunk]), body[i:i + chunk]) for i in range(0, len(body), chunk)]
    return exchange(stack, head + b"".join(parts) + b"0\r\n\r\n", ANSWER_BOUND_S)


def oversized_with_expect(stack: Stack) -> tuple[bytes, float]:
    """Expect: 100-continue with a Content-Length over the limit: refused before any body is sent."""
    head = build_request(stack, Case("x", headers=("Content-Type: application/json", "Expect: 100-continue",
                                                   f"Content-Length: {MAX_BODY * 16}")))
    return exchange(stack, head, ANSWER_BOUND_S)


# ----------------------------------------------------------------------------------------------- catalogue
DEEP = b"[" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000
LONG_KEY = "q" * 10_000

CASES = [
    # ---- /recommend: wrong types ------------------------------------------------------------------------
    Case("user_id bool true", body=j({"user_id": True}), names=("user_id",)),
    Case("user_id bool false", body=j({"user_id": False}), names=("user_id",)),
    Case("user_id string digits", body=j({"user_id": "1"}), names=("user_id",)),
    Case("user_id float integral", body=j({"user_id": 1.0}), names=("user_id",)),
    Case("user_id float", body=j({"user_id": 1.5}), names=("user_id",)),
    Case("user_id null", body=j({"user_id": None}), names=("user_id",)),
    Case("user_id array", body=j({"user_id": [1]}), names=("user_id",)),
    Case("user_id object", body=j({"user_id": {"id": 1}}), names=("user_id",)),
    Case("user_id 2**63", body=j({"user_id": 2**63}), names=("user_id",)),
    Case("user_id negative", body=j({"user_id": -1}), names=("user_id",)),
    Case("user_id 10**400", body=b'{"user_id": 1' + b"0" * 400 + b"}", names=("user_id",)),
    Case("user_id missing", body=j({"k": 3}), names=("user_id",)),
    Case("empty body", body=b"", names=("user_id",)),
    Case("k bool", body=rec(k=True), names=("k",)),
    Case("k string", body=rec(k="10"), names=("k",)),
    Case("k float integral", body=rec(k=10.0), names=("k",)),
    Case("k zero", body=rec(k=0), names=("k",)),
    Case("k negative", body=rec(k=-5), names=("k",)),
    Case("k 10**9", body=rec(k=10**9), names=("k",)),
    Case("k null", body=rec(k=None), names=("k",)),
    Case("k NaN raw", body=b'{"user_id": 1, "k": NaN}', names=("k",)),
    Case("k Infinity raw", body=b'{"user_id": 1, "k": Infinity}', names=("k",)),
    Case("k 1e308", body=b'{"user_id": 1, "k": 1e308}', names=("k",)),
    Case("exclude_seen string", body=rec(exclude_seen="true"), names=("exclude_seen",)),
    Case("exclude_seen int", body=rec(exclude_seen=1), names=("exclude_seen",)),
    Case("unknown field", body=rec(colour="red"), names=("colour",)),
    Case("unknown field 10k name", body=j({"user_id": 1, LONG_KEY: 1}), names=("q" * 50,)),
    Case("duplicate key, bool last", body=b'{"user_id": 1, "user_id": true}', names=("user_id",)),
    # ---- /recommend: filters ----------------------------------------------------------------------------
    Case("unknown filter", body=rec(filters={"genre": ["Drama"]}), names=("genre",)),
    Case("filter values not a list", body=rec(filters={"genres": "Drama"}), names=("genres",)),
    Case("filter value number", body=rec(filters={"genres": [1]}), names=("genres",)),
    Case("filter 33 values", body=rec(filters={"genres": ["Drama"] * 33}), names=("genres",)),
    Case("filter value 65 chars", body=rec(filters={"genres": ["x" * 65]}), names=("genres",)),
    Case("filter value NUL", body=rec(filters={"genres": ["Dra\u0000ma"]}), names=("genres",)),
    Case("filter value empty", body=rec(filters={"genres": [""]}), names=("genres",)),
    Case("filter year string", body=rec(filters={"year_min": "1990"}), names=("year_min",)),
    Case("filter year bool", body=rec(filters={"year_min": True}), names=("year_min",)),
    Case("filter year NaN raw", body=b'{"user_id": 1, "filters": {"year_min": NaN}}', names=("year_min",)),
    Case("filter year -Infinity raw", body=b'{"user_id": 1, "filters": {"year_max": -Infinity}}',
         names=("year_max",)),
    Case("filter year 1e308", body=rec(filters={"year_min": 1e308}), names=("year_min",)),
    Case("filter min above max", body=rec(filters={"year_min": 2000, "year_max": 1990}), names=("year_min",)),
    Case("filters array", body=rec(filters=[]), names=("filters",)),
    Case("filters string", body=rec(filters="genres=Drama"), names=("filters",)),
    # ---- /recommend: profile ----------------------------------------------------------------------------
    Case("profile age string", body=rec(user_id=99999, profile={"age": "30"}), names=("age",)),
    Case("profile age bool", body=rec(user_id=99999, profile={"age": True}), names=("age",)),
    Case("profile age negative", body=rec(user_id=99999, profile={"age": -3}), names=("age",)),
    Case("profile age NaN raw", body=b'{"user_id": 99999, "profile": {"age": NaN}}', names=("age",)),
    Case("profile age 1e308", body=rec(user_id=99999, profile={"age": 1e308}), names=("age",)),
    Case("profile gender number", body=rec(user_id=99999, profile={"gender": 5}), names=("gender",)),
    Case("profile gender NUL", body=rec(user_id=99999, profile={"gender": "M\u0000"}), names=("gender",)),
    Case("profile gender control char", body=rec(user_id=99999, profile={"gender": "M\u001b[31m"}),
         names=("gender",)),
    Case("profile gender 3000 chars", body=rec(user_id=99999, profile={"gender": "x" * 3000}), names=("gender",)),
    Case("profile unknown attribute", body=rec(user_id=99999, profile={"income": 5}), names=("income",)),
    Case("profile array", body=rec(user_id=99999, profile=[]), names=("profile",)),
    # ---- /recommend: bodies that are not a request object ------------------------------------------------
    Case("truncated JSON", body=b'{"user_id": 1, "k": 3', names=("body", "JSON")),
    Case("invalid UTF-8", body=b'{"user_id": 1, "profile": {"gender": "\xff\xfe"}}', names=("body",)),
    Case("lone surrogate", body=b'{"user_id": 1, "profile": {"gender": "\\ud800"}}', names=("body",)),
    Case("UTF-8 BOM", body=b'\xef\xbb\xbf{"user_id": 1}', names=("body",)),
    Case("top-level array", body=b"[1, 2]", names=("body",)),
    Case("top-level string", body=b'"user_id"', names=("body",)),
    Case("top-level number", body=b"5", names=("body",)),
    Case("top-level null", body=b"null", names=("body",)),
    Case("10,000 levels of [", body=DEEP, names=("body",)),
    Case("10,000 levels of objects", body=DEEP_OBJECT, names=("body",)),
    Case("trailing garbage", body=b'{"user_id": 1} x', names=("body",)),
    Case("comment", body=b'{"user_id": 1 /* c */}', names=("body",)),
    Case("single quotes", body=b"{'user_id': 1}", names=("body",)),
    Case("binary junk", body=bytes(range(256)) * 4, names=("body",)),
    # ---- headers ------------------------------------------------------------------------------------------
    Case("Content-Type twice, json first", body=rec(),
         headers=("Content-Type: application/json", "Content-Type: multipart/form-data"), names=("Content-Type",)),
    Case("Content-Type twice, multipart first", body=rec(),
         headers=("Content-Type: multipart/form-data", "Content-Type: application/json"), names=("Content-Type",)),
    Case("Content-Type twice, both json", body=rec(),
         headers=("Content-Type: application/json", "Content-Type: application/json"), names=("Content-Type",)),
    Case("Content-Length twice", body=rec(), headers=("Content-Type: application/json",
                                                      f"Content-Length: {len(rec())}", f"Content-Length: {len(rec())}"),
         names=(PARSER,)),
    Case("Content-Length and Transfer-Encoding", body=b"0\r\n\r\n",
         headers=("Content-Type: application/json", "Content-Length: 5", "Transfer-Encoding: chunked"),
         names=(PARSER,)),
    Case("Content-Length not a number", body=rec(),
         headers=("Content-Type: application/json", "Content-Length: ten"), names=(PARSER,)),
    Case("multipart without boundary", body=rec(), headers=("Content-Type: multipart/form-data",), status=415,
         names=("Content-Type",)),
    Case("multipart with boundary", body=b"--b\r\n\r\n--b--\r\n", headers=("Content-Type: multipart/form-data; "
                                                                          "boundary=b",), status=415,
         names=("Content-Type",)),
    Case("text/plain", body=rec(), headers=("Content-Type: text/plain",), status=415, names=("Content-Type",)),
    Case("form-urlencoded", body=b"user_id=1&k=3", headers=("Content-Type: application/x-www-form-urlencoded",),
         status=415, names=("Content-Type",)),
    Case("no Content-Type", body=rec(), headers=(), status=415, names=("Content-Type",)),
    Case("charset latin-1", body=rec(), headers=("Content-Type: application/json; charset=latin-1",), status=415,
         names=("Content-Type",)),
    Case("json lookalike", body=rec(), headers=("Content-Type: application/jsonx",), status=415,
         names=("Content-Type",)),
    Case("bentoml pickle", body=b"\x80\x04K\x01.", headers=("Content-Type: application/vnd.bentoml+pickle",),
         status=415, names=("Content-Type",)),
    Case("charset utf-8 accepted", body=rec(), headers=("Content-Type: application/json; charset=UTF-8",),
         status=200),
    Case("upper-case media type accepted", body=rec(), headers=("Content-Type: APPLICATION/JSON",), status=200),
    Case("header value over the header limit", body=rec(), status=431, names=("x-junk",),
         headers=("Content-Type: application/json", f"X-Junk: {'j' * (MAX_HEADER_BYTES + 1000)}")),
    Case("many small headers", body=rec(), headers=("Content-Type: application/json",
                                                    *(f"X-H{i}: {i}" for i in range(100))), status=200),
    Case("latin-1 header value", body=rec(), headers=("Content-Type: application/json", "X-Name: caf\xe9"),
         status=200),
    # ---- body size ----------------------------------------------------------------------------------------
    Case("Content-Length over the limit", body=b"{}", headers=("Content-Type: application/json",
                                                               f"Content-Length: {MAX_BODY * 16}"),
         status=413, names=(str(MAX_BODY), "max_body_bytes")),
    Case("body over the limit", body=b'{"user_id": 1, "pad": "' + b"x" * (MAX_BODY + 10) + b'"}', status=413,
         names=(str(MAX_BODY),)),
    Case("chunked over the limit", raw=lambda s: chunked(s, MAX_BODY + 1000), status=413, names=(str(MAX_BODY),)),
    Case("chunked small body", raw=lambda s: chunked(s, 0), status=200),
    Case("Expect 100-continue over the limit", raw=oversized_with_expect, status=413, names=(str(MAX_BODY),)),
    Case("GET with a body over the limit", method="GET", path="/healthz", body=b"x" * (MAX_BODY + 1), headers=(),
         status=413, names=(str(MAX_BODY),)),
    # ---- slow and stalled clients ---------------------------------------------------------------------------
    Case("slow-loris body", raw=slow_body, status=408, names=("body",), bound_s=TIMEOUT_S + ANSWER_BOUND_S),
    Case("headers then nothing", raw=headers_then_stall, status=408, names=("body",),
         bound_s=TIMEOUT_S + ANSWER_BOUND_S),
    Case("body trickles in", raw=trickle, status=408, names=("body",), bound_s=TIMEOUT_S + ANSWER_BOUND_S),
    Case("a stalled connection blocks nobody", raw=stalled_headers_block_nobody, status=200),
    # ---- /interactions --------------------------------------------------------------------------------------
    Case("timestamp year 1", path="/interactions", body=inter(event_timestamp="0001-01-01T00:00:00Z"),
         names=("event_timestamp",)),
    Case("timestamp year 9999", path="/interactions", body=inter(event_timestamp="9999-12-31T23:59:59Z"),
         names=("event_timestamp",)),
    Case("timestamp 9999 west of UTC", path="/interactions", body=inter(event_timestamp="9999-12-31T23:59:59-14:00"),
         names=("event_timestamp",)),
    Case("timestamp year 1 east of UTC", path="/interactions", body=inter(event_timestamp="0001-01-01T00:00:00+14:00"),
         names=("event_timestamp",)),
    Case("timestamp naive", path="/interactions", body=inter(event_timestamp=stamp(timedelta(0), "%Y-%m-%dT%H:%M:%S")),
         names=("event_timestamp",)),
    Case("timestamp epoch number", path="/interactions", body=inter(event_timestamp=1_700_000_000),
         names=("event_timestamp",)),
    Case("timestamp epoch string", path="/interactions", body=inter(event_timestamp="1700000000"),
         names=("event_timestamp",)),
    Case("timestamp date only", path="/interactions", body=inter(event_timestamp="2024-01-01"),
         names=("event_timestamp",)),
    Case("timestamp 30 February", path="/interactions", body=inter(event_timestamp="2024-02-30T00:00:00Z"),
         names=("event_timestamp",)),
    Case("timestamp two days ahead", path="/interactions", body=inter(event_timestamp=stamp(timedelta(days=2))),
         names=("event_timestamp",)),
    Case("timestamp two years ago", path="/interactions", body=inter(event_timestamp=stamp(-timedelta(days=730))),
         names=("event_timestamp",)),
    Case("timestamp word", path="/interactions", body=inter(event_timestamp="now"), names=("event_timestamp",)),
    Case("timestamp NUL", path="/interactions", body=inter(event_timestamp="2024-01-01T00:00:00Z\u0000"),
         names=("event_timestamp",)),
    Case("rating string", path="/interactions", body=inter(rating="5"), names=("rating",)),
    Case("rating bool", path="/interactions", body=inter(rating=True), names=("rating",)),
    Case("rating NaN raw", path="/interactions", body=b'{"user_id": 2, "item_id": 7, "rating": NaN}',
         names=("rating",)),
    Case("rating 1e308", path="/interactions", body=inter(rating=1e308), names=("rating",)),
    Case("rating below the scale", path="/interactions", body=inter(rating=-1), names=("rating",)),
    Case("item_id missing", path="/interactions", body=j({"user_id": 2}), names=("item_id",)),
    Case("item_id bool", path="/interactions", body=inter(item_id=True), names=("item_id",)),
    Case("item_id string", path="/interactions", body=inter(item_id="7"), names=("item_id",)),
    Case("user_id 2**63 interaction", path="/interactions", body=inter(user_id=2**63), names=("user_id",)),
    Case("unknown field interaction", path="/interactions", body=inter(stars=5), names=("stars",)),
    Case("interactions as text/plain", path="/interactions", body=inter(), headers=("Content-Type: text/plain",),
         status=415, names=("Content-Type",)),
    Case("interaction with zone", path="/interactions", status=200, interaction=(3, 11),
         body=j({"user_id": 3, "item_id": 11, "rating": 4,
                 "event_timestamp": stamp(-timedelta(minutes=5), "%Y-%m-%dT%H:%M:%S.123+00:00")})),
    Case("interaction +02:00", path="/interactions", status=200, interaction=(4, 12),
         body=j({"user_id": 4, "item_id": 12, "rating": 2.5,
                 "event_timestamp": (datetime.now(UTC) - timedelta(minutes=1)).astimezone(
                     timezone(timedelta(hours=2))).isoformat()})),
    Case("interaction without time", path="/interactions", status=200, interaction=(5, 13),
         body=j({"user_id": 5, "item_id": 13})),
    Case("interaction unknown ids", path="/interactions", status=200, interaction=(987654, 876543),
         body=j({"user_id": 987654, "item_id": 876543, "rating": None})),
    # ---- valid requests among them (acknowledged: must be logged) ------------------------------------------
    Case("valid recommend", body=rec(), status=200),
    Case("valid with query string", path="/recommend?debug=1&x=%00", body=rec(), status=200),
    Case("valid cold start with profile", body=rec(user_id=424242, profile={"age": 30, "gender": "F"}), status=200),
    Case("valid unicode filter value", body=rec(filters={"genres": ["Drämä ✓"]}), status=200),
    # ---- other routes and methods ------------------------------------------------------------------------------
    Case("GET /healthz", method="GET", path="/healthz", headers=(), status=200),
    Case("GET /readyz", method="GET", path="/readyz", headers=(), status=200),
    Case("GET /livez", method="GET", path="/livez", headers=(), status=200),
    Case("GET /metrics", method="GET", path="/metrics", headers=(), status=200),
    Case("GET /docs.json", method="GET", path="/docs.json", headers=(), status=200),
    Case("GET /healthz/details", method="GET", path="/healthz/details", headers=(), status=200),
    Case("GET /readyz with a body", method="GET", path="/readyz", body=b"junk", headers=(), status=200),
    Case("HEAD /healthz", method="HEAD", path="/healthz", headers=(), status=(200, 405)),
    Case("unknown route", method="GET", path="/admin", headers=(), status=404, names=("/admin",)),
    Case("path traversal", method="GET", path="/../../etc/passwd", headers=(), status=404, names=("no route",)),
    Case("path of 8 KiB", method="GET", path="/" + "p" * 8192, headers=(), status=404, names=("no route",)),
    Case("GET /recommend", method="GET", path="/recommend", headers=(), status=405, names=("GET",)),
    Case("PUT /interactions", method="PUT", path="/interactions", body=inter(), status=405, names=("PUT",)),
    Case("DELETE /recommend", method="DELETE", path="/recommend", headers=(), status=405, names=("DELETE",)),
    Case("OPTIONS /recommend", method="OPTIONS", path="/recommend", headers=(), status=405, names=("OPTIONS",)),
    Case("POST /healthz", method="POST", path="/healthz", body=b"{}", status=405, names=("POST",)),
    Case("POST /metrics", method="POST", path="/metrics", body=b"{}", status=405, names=("POST",)),
]


def auth_cases() -> list[Case]:
    """Authorization oddities (only when the API authenticates callers)."""
    return [
        Case("Authorization twice", body=rec(), status=401, names=("Authorization",),
             raw=lambda s: exchange(s, build_request(s, Case("x", body=rec())).replace(
                 b"Connection: close\r\n", b"Connection: close\r\nAuthorization: Bearer x\r\n"), ANSWER_BOUND_S)),
        Case("Authorization of 8 KiB", status=401, names=("token",),
             raw=lambda s: _without_auth(s, f"Authorization: Bearer {'t' * 8192}")),
        Case("Authorization Basic", status=401, names=("Authorization",),
             raw=lambda s: _without_auth(s, "Authorization: Basic dXNlcjpwYXNz")),
        Case("no Authorization", status=401, names=("Authorization",), raw=lambda s: _without_auth(s)),
    ]


def _without_auth(stack: Stack, *extra: str) -> tuple[bytes, float]:
    host = urlsplit(stack.url).netloc
    body = rec()
    lines = ["POST /recommend HTTP/1.1", f"Host: {host}", "Connection: close", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *extra]
    return exchange(stack, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, ANSWER_BOUND_S)


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory, bundles):
    overrides = {"serving.request_timeout_s": TIMEOUT_S}
    if request.param == "postgresql":
        overrides["serving.request_log"] = request.getfixturevalue("postgres").create_database(
            f"hostile_{uuid.uuid4().hex[:12]}")
    built = build_stack(tmp_path_factory.mktemp(f"hostile_{request.param}"), bundles["a"], overrides=overrides)
    ACKED[request.param] = {"requests": [], "interactions": Counter()}
    built.backend = request.param
    try:
        yield built
    finally:
        built.stop()


def run_case(stack: Stack, case: Case) -> None:
    response, seconds = (case.raw(stack) if case.raw is not None
                         else exchange(stack, build_request(stack, case), case.bound_s))
    assert response, f"{case.name}: the server closed the connection without an answer"
    status, headers, body = parse(response)
    expected = case.status if isinstance(case.status, tuple) else (case.status,)
    assert status < 500, f"{case.name}: {status} {body[:300]!r}"
    assert status in expected, f"{case.name}: {status} (expected {expected}) {body[:300]!r}"
    assert seconds < case.bound_s, f"{case.name}: answered after {seconds:.1f} s"
    if status >= 400:
        assert len(body) <= MAX_ERROR_BYTES, f"{case.name}: error body of {len(body)} bytes"
        if PARSER in case.names:  # the HTTP parser's own fixed answer: the request never reached the API
            assert body == b"Invalid HTTP request received.", body
        else:
            text = body.decode("utf-8").lower()
            assert json.loads(body)["error"], body
            for name in case.names:
                assert name.lower() in text, f"{case.name}: {name!r} not in {body[:300]!r}"
    if status == 200 and "/recommend" in case.path and case.method == "POST":
        ACKED[stack.backend]["requests"].append(json.loads(body)["request_id"])
    if status == 200 and case.path == "/interactions":
        ACKED[stack.backend]["interactions"][case.interaction] += 1


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request(stack, case):
    run_case(stack, case)


def test_authorization_oddities(stack):
    """Odd Authorization headers are 401s that name the header."""
    for case in auth_cases():
        run_case(stack, case)


def test_concurrent_stalled_bodies_do_not_starve_the_api(stack):
    """Twenty slow-loris connections at once: each gets its 408, and a valid request is answered meanwhile."""
    results: list[tuple[bytes, float]] = []
    threads = [threading.Thread(target=lambda: results.append(slow_body(stack))) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    run_case(stack, Case("valid during the stall", body=rec(), status=200))
    for thread in threads:
        thread.join(timeout=TIMEOUT_S + ANSWER_BOUND_S + 5)
    assert len(results) == 20
    assert all(parse(response)[0] == 408 for response, _ in results)


def test_the_api_is_healthy_and_every_acknowledged_write_is_logged(stack):
    """After the catalogue: ready, dependencies up (no bad request tripped a breaker), and the log holds every
    acknowledged request and interaction, and no refused interaction."""
    response, _ = exchange(stack, build_request(stack, Case("d", method="GET", path="/healthz/details", headers=())),
                           ANSWER_BOUND_S)
    status, _, body = parse(response)
    details = json.loads(body)
    assert status == 200 and details["ready"], details
    assert details["triton"]["up"] and details["feature_store"]["up"], details
    acked = ACKED[stack.backend]
    assert len(acked["requests"]) >= 8 and sum(acked["interactions"].values()) == 4
    with open_request_log(stack.config.serving.request_log) as log:
        requests, interactions = log.requests_frame(), log.interactions_frame()
    missing = set(acked["requests"]) - set(requests["request_id"])
    assert not missing, f"{len(missing)} acknowledged requests are not in the log"
    logged = Counter(zip(interactions["user_id"].tolist(), interactions["item_id"].tolist(), strict=True))
    assert logged == acked["interactions"], "the log holds exactly the acknowledged interactions"
    assert len(CASES) >= 90
