"""The recommendation API (BentoML): a thin shell around the request engine (serving/engine.py).

POST /recommend and POST /interactions hand the validated request to `Engine` (Feast online features -> one
Triton gRPC call -> items with metadata, one committed append to the request log, contract C6) and count and
time its answers in Prometheus metrics; GET /healthz/details reports the engine's dependencies. Every request
passes serving/http_guard.py first (headers, body size, deadline, bounded error bodies), then the bearer-token
check (serving/auth.py). The config comes from $RECSYS_CONFIG (see serving/api_server.py, which starts it).
"""

import logging
import time
from typing import Any

import bentoml
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from components.config import load_config
from components.errors import RecsysError
from serving.api_models import RequestLimits, api_models
from serving.auth import BearerAuth, caller_of, may_read_history
from serving.engine import HEALTH_INTERVAL_S, POPULARITY_VERSION, STAGES, Engine
from serving.http_guard import JSON_ROUTES, RequestGuard

__all__ = ["HEALTH_INTERVAL_S", "RecommendationService"]  # the watcher period, read by callers that wait for it

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


def _observe_recommend(response: BaseModel) -> str:
    """Count and time one /recommend answer; returns its outcome (ok, cold_start or degraded)."""
    for stage in STAGES:
        STAGE_LATENCY.labels(stage=stage).observe(response.timings_ms[stage] / 1000)
    if response.degraded:
        FALLBACKS.labels(reason="degraded").inc()
    elif response.model_version == POPULARITY_VERSION:  # not degraded yet not ranked by the model: a cold start
        FALLBACKS.labels(reason="cold_start_popularity").inc()  # without a profile
    outcome = "degraded" if response.degraded else "cold_start" if response.cold_start else "ok"
    REQUESTS.labels(endpoint="recommend", outcome=outcome).inc()
    return outcome


def _server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={value:.3f}" for name, value in timings.items())


def _unavailable(endpoint: str, err: Exception) -> JSONResponse:
    REQUESTS.labels(endpoint=endpoint, outcome="error").inc()
    log.error("%s failed: %s", endpoint, err)
    return JSONResponse({"error": f"{endpoint} could not be served: {err}"}, status_code=503)


def _count_rejection(path: str, status: int) -> None:
    """Requests the HTTP guard refused, counted per API route (other paths are not labels: no cardinality)."""
    if path in JSON_ROUTES:
        REQUESTS.labels(endpoint=path.strip("/"), outcome="rejected").inc()


async def _health_details(request: Request) -> JSONResponse:
    """GET /healthz/details: readiness, Triton, the feature store and the request log (see Engine.health)."""
    engine = bentoml.get_current_service().engine
    return JSONResponse(await run_in_threadpool(engine.health))


CONFIG = load_config()  # $RECSYS_CONFIG
MODELS = api_models(CONFIG.dataset, RequestLimits.from_serving(CONFIG.serving))  # the declared data set's models


# serving.api_workers processes (> 1 only with the shared PostgreSQL log: each counts every worker's interactions
# in its popularity priors from there), 8 request threads each; BentoML's OpenTelemetry spans cover the API routes
# only with serving.trace_requests
@bentoml.service(name="recsys_recommender", workers=CONFIG.serving.api_workers, threads=8,
                 resources={"cpu": str(CONFIG.serving.api_workers)},
                 traffic={"timeout": CONFIG.serving.request_timeout_s + 5},  # RequestGuard answers first
                 logging={"access": {"enabled": False}},
                 tracing={"excluded_urls": [] if CONFIG.serving.trace_requests else list(JSON_ROUTES)})
class RecommendationService:
    """POST /recommend, POST /interactions; GET /healthz, /livez, /readyz (the API can answer, from its fallback if
    need be), /healthz/details (each dependency's state), /metrics; every
    route but the probes and the OpenAPI document needs a bearer token with its scope (serving/auth.py)."""

    def __init__(self) -> None:
        self.engine = Engine(load_config())

    def __is_ready__(self) -> bool:
        return self.engine.ready()

    @bentoml.api(route="/recommend", input_spec=MODELS.RecommendRequest)
    def recommend(self, ctx: bentoml.Context, **body: Any) -> MODELS.RecommendResponse:
        """Top-k items for a user: Feast features, one Triton call, metadata and an explanation per item."""
        t0 = time.perf_counter()
        try:
            request = MODELS.RecommendRequest.model_construct(**body)
            response = self.engine.recommend(
                request, reveal_history=may_read_history(caller_of(ctx.request.scope), request.user_id))
        except RecsysError as err:
            return _unavailable("recommend", err)
        ctx.response.headers["Server-Timing"] = _server_timing(response.timings_ms)
        _observe_recommend(response)
        LATENCY.labels(endpoint="recommend").observe(time.perf_counter() - t0)
        return response

    @bentoml.api(route="/interactions", input_spec=MODELS.InteractionRequest)
    def interactions(self, ctx: bentoml.Context, **body: Any) -> MODELS.InteractionResponse:
        """Record one interaction: pushed to Feast's online store at once and appended to the log."""
        t0 = time.perf_counter()
        try:
            request = MODELS.InteractionRequest.model_construct(**body)
            response = self.engine.interaction(
                request, reveal_history=may_read_history(caller_of(ctx.request.scope), request.user_id))
        except RecsysError as err:
            return _unavailable("interactions", err)
        if not response.pushed:
            FALLBACKS.labels(reason="push_failed").inc()
        REQUESTS.labels(endpoint="interactions", outcome="degraded" if response.degraded else "ok").inc()
        LATENCY.labels(endpoint="interactions").observe(time.perf_counter() - t0)
        return response


RecommendationService.mount_asgi_app(Starlette(routes=[Route("/details", _health_details, methods=["GET"])]),
                                     path="/healthz")
# outermost: headers, body size, deadline and bounded error bodies (serving/http_guard.py); then who is calling
RecommendationService.add_asgi_middleware(RequestGuard, max_body_bytes=CONFIG.serving.max_body_bytes,
                                          request_timeout_s=CONFIG.serving.request_timeout_s,
                                          on_reject=_count_rejection)
RecommendationService.add_asgi_middleware(BearerAuth)
