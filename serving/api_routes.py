"""The API's JSON routes, POST /recommend and POST /interactions: a FastAPI app that the BentoML service mounts at
its root (serving/service.py), counted and timed in Prometheus metrics.

Why not `@bentoml.api`: on this machine BentoML's API-method path (its IO model, the method's signature rebuilt per
call, the thread hand-off, its response encoding) costs 1.8–2.2 ms of CPU per request before any of our work; the
same request through a mounted FastAPI route costs 0.4 ms, inside the same BentoML server (its process model, probes,
/metrics, middlewares and OpenAPI document, into which BentoML merges a mounted FastAPI app's routes). Each request
body is parsed as strict JSON by the data set's pydantic models (`serving.api_models`; a refusal is a 400 naming the
fields, before any side effect), handed to the engine on one of `threads` request threads (/recommend requests that
queue for a thread go together, serving/request_batcher.py), and answered with the response model's own JSON encoding.
"""

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import bentoml
from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from components.errors import RecsysError
from serving.api_models import ApiModels
from serving.auth import caller_of, may_read_history
from serving.engine import POPULARITY_VERSION, STAGES, Engine
from serving.http_guard import JSON_ROUTES
from serving.request_batcher import RequestBatcher

log = logging.getLogger("recsys.api")

REQUESTS = bentoml.metrics.Counter(
    name="recsys_api_requests_total", documentation="API requests by endpoint and outcome",
    labelnames=["endpoint", "outcome"])
LATENCY = bentoml.metrics.Histogram(
    name="recsys_api_latency_seconds", documentation="Handler latency by endpoint", labelnames=["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
STAGE_LATENCY = bentoml.metrics.Histogram(
    name="recsys_api_stage_seconds", documentation="Time per stage of /recommend (feast, triton, log)",
    labelnames=["stage"], buckets=(0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.05, 0.1, 0.5))
FALLBACKS = bentoml.metrics.Counter(
    name="recsys_api_fallbacks_total", documentation="Responses not ranked by the model, by reason",
    labelnames=["reason"])


class ErrorBody(BaseModel):
    """Every refusal and failure (serving/http_guard.py bounds and rewrites them): what is wrong, and where."""

    error: str
    fields: list[dict[str, str]] | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "Refused: the error names the field or header at fault"},
    503: {"model": ErrorBody, "description": "The request could not be served (see the error)"},
}


@functools.cache
def _child(metric: Any, *labels: str) -> Any:
    """A metric's child for these label values, looked up once (`labels()` takes a lock and checks them per call)."""
    return metric.labels(*labels)


def observe_recommend(response: BaseModel) -> str:
    """Count and time one /recommend answer; returns its outcome (ok, cold_start or degraded)."""
    for stage in STAGES:
        _child(STAGE_LATENCY, stage).observe(response.timings_ms[stage] / 1000)
    if response.degraded:
        _child(FALLBACKS, "degraded").inc()
    elif response.model_version == POPULARITY_VERSION:  # not degraded yet not ranked by the model: a cold start
        _child(FALLBACKS, "cold_start_popularity").inc()  # without a profile
    outcome = "degraded" if response.degraded else "cold_start" if response.cold_start else "ok"
    _child(REQUESTS, "recommend", outcome).inc()
    return outcome


def count_rejection(path: str, status: int) -> None:
    """Requests the HTTP guard refused, counted per API route (other paths are not labels: no cardinality)."""
    if path in JSON_ROUTES:
        _child(REQUESTS, path.strip("/"), "rejected").inc()


def server_timing(timings: dict[str, float]) -> str:
    """The Server-Timing header of a /recommend answer (milliseconds per stage)."""
    return ", ".join(f"{name};dur={value:.3f}" for name, value in timings.items())


def _json(model: BaseModel, headers: dict[str, str] | None = None) -> Response:
    return Response(model.model_dump_json(), media_type="application/json", headers=headers)


def _unavailable(endpoint: str, err: Exception) -> JSONResponse:
    _child(REQUESTS, endpoint, "error").inc()
    log.error("%s failed: %s", endpoint, err)
    return JSONResponse({"error": f"{endpoint} could not be served: {err}"}, status_code=503)


def _parsed(model: type[BaseModel], body: bytes) -> BaseModel | JSONResponse:
    """The request `model` read from a JSON body (strict JSON: no byte-order mark, no NaN; an empty body is an
    object without fields), or a 400 that gives each field's location and what is wrong with it."""
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as err:
        fields = [{"loc": list(item["loc"]) or ["body"], "msg": item["msg"]} for item in err.errors()]
        return JSONResponse({"error": "invalid request body", "detail": fields}, status_code=400)


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of a JSON `model` (its schema self-contained: nested models inlined)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        return [inline(value) for value in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def api_routes(models: ApiModels, engine_of: Callable[[], Engine], threads: int, batch: int = 1) -> FastAPI:
    """The /recommend and /interactions routes of one data set's `models`; `engine_of()` gives the service's engine
    (created with the service), whose blocking calls run on at most `threads` threads at once; /recommend requests
    that wait for a thread are answered together, at most `batch` per engine call (serving.request_batcher)."""
    # BentoML's server serves the OpenAPI document and traces and meters every route (serving.trace_requests):
    # FastAPI's own documents and telemetry are off (its telemetry looks up the OpenTelemetry providers per request)
    app = FastAPI(title="recsys_recommender", openapi_url=None, docs_url=None, redoc_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    # the engine's blocking calls: asyncio's own executor hand-off (anyio's worker threads and capacity limiter
    # cost about twice its CPU on the event loop)
    threads_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="recsys-request")
    recommend_batches: RequestBatcher = RequestBatcher(lambda batch: engine_of().recommend_many(batch), threads_pool,
                                                       threads=threads, max_batch=batch)

    def body_of(request: Request, model: type[BaseModel], body: bytes) -> tuple[BaseModel, bool] | Response:
        """The request `model` read from `body` and whether the caller may read the user's history, or a 400."""
        parsed = _parsed(model, body)
        if isinstance(parsed, Response):
            return parsed
        return parsed, may_read_history(caller_of(request.scope), parsed.user_id)

    async def recommend(request: Request) -> Response:
        """Top-k items for a user: Feast features, one Triton call, metadata and an explanation per item."""
        t0 = time.perf_counter()
        asked = body_of(request, models.RecommendRequest, await request.body())
        if isinstance(asked, Response):
            return asked
        try:
            response = await recommend_batches.submit(asked)
        except RecsysError as err:
            return _unavailable("recommend", err)
        observe_recommend(response)
        _child(LATENCY, "recommend").observe(time.perf_counter() - t0)
        return _json(response, {"Server-Timing": server_timing(response.timings_ms)})

    async def interactions(request: Request) -> Response:
        """Record one interaction: pushed to Feast's online store at once and appended to the log."""
        t0 = time.perf_counter()
        asked = body_of(request, models.InteractionRequest, await request.body())
        if isinstance(asked, Response):
            return asked
        body, reveal = asked
        call = partial(engine_of().interaction, body, reveal_history=reveal)
        try:
            response = await asyncio.get_running_loop().run_in_executor(threads_pool, call)
        except RecsysError as err:
            return _unavailable("interactions", err)
        if not response.pushed:
            _child(FALLBACKS, "push_failed").inc()
        _child(REQUESTS, "interactions", "degraded" if response.degraded else "ok").inc()
        _child(LATENCY, "interactions").observe(time.perf_counter() - t0)
        return _json(response)

    # requests are dispatched by plain Starlette routes placed first (FastAPI's per-request dependency solving,
    # which builds a Response for a handler that takes only the Request, cost ~4 % of the API's CPU); the
    # FastAPI routes behind them, never reached, declare the same paths for the OpenAPI document
    app.router.routes[:0] = [Route("/recommend", recommend, methods=["POST"]),
                             Route("/interactions", interactions, methods=["POST"])]
    app.add_api_route("/recommend", recommend, methods=["POST"], response_model=models.RecommendResponse,
                      responses=ERROR_RESPONSES, openapi_extra=request_body(models.RecommendRequest))
    app.add_api_route("/interactions", interactions, methods=["POST"], response_model=models.InteractionResponse,
                      responses=ERROR_RESPONSES, openapi_extra=request_body(models.InteractionRequest))
    return app
