"""The recommendation API (BentoML): a thin shell around the request engine (serving/engine.py).

POST /recommend and POST /interactions (serving/api_routes.py, a FastAPI app mounted at the root) hand the validated
request to `Engine` (Feast online features -> one Triton gRPC call -> items with metadata, one committed append to
the request log, contract C6) and count and time its answers in Prometheus metrics; GET /healthz/details reports the
engine's dependencies. Every request passes serving/http_guard.py first (headers, body size, deadline, bounded
error bodies), then the bearer-token check (serving/auth.py). The config comes from $RECSYS_CONFIG (see
serving/api_server.py, which starts it).
"""

import gc

import bentoml
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from components.config import load_config
from serving.api_models import RequestLimits, api_models
from serving.api_routes import api_routes, count_rejection
from serving.auth import BearerAuth
from serving.engine import HEALTH_INTERVAL_S, Engine
from serving.http_guard import JSON_ROUTES, RequestGuard
from serving.worker_cpu import pin_worker

__all__ = ["HEALTH_INTERVAL_S", "RecommendationService"]  # the watcher period, read by callers that wait for it


async def _health_details(request: Request) -> JSONResponse:
    """GET /healthz/details: readiness, Triton, the feature store and the request log (see Engine.health)."""
    engine = bentoml.get_current_service().engine
    return JSONResponse(await run_in_threadpool(engine.health))


CONFIG = load_config()  # $RECSYS_CONFIG
REQUEST_THREADS = CONFIG.serving.request_threads  # per worker: the JSON routes' engine calls at once
MODELS = api_models(CONFIG.dataset, RequestLimits.from_serving(CONFIG.serving))  # the declared data set's models


# serving.api_workers processes (> 1 only with the shared PostgreSQL log: each counts every worker's interactions
# in its popularity priors from there), serving.request_threads each; BentoML's OpenTelemetry spans cover the API
# routes only with serving.trace_requests
@bentoml.service(name="recsys_recommender", workers=CONFIG.serving.api_workers, threads=REQUEST_THREADS,
                 resources={"cpu": str(CONFIG.serving.api_workers)},
                 traffic={"timeout": CONFIG.serving.request_timeout_s + 5},  # RequestGuard answers first
                 logging={"access": {"enabled": False}},
                 tracing={"excluded_urls": [] if CONFIG.serving.trace_requests else list(JSON_ROUTES)})
class RecommendationService:
    """POST /recommend, POST /interactions; GET /healthz, /livez, /readyz (the API can answer, from its fallback if
    need be), /healthz/details (each dependency's state), /metrics; every
    route but the probes and the OpenAPI document needs a bearer token with its scope (serving/auth.py)."""

    def __init__(self) -> None:
        config = load_config()
        if config.serving.pin_workers:  # before the engine starts its threads: they inherit the CPU
            pin_worker(bentoml.server_context.worker_index)
        self.engine = Engine(config)
        # everything loaded so far (Feast, pandas, the model state: millions of objects) lives as long as the
        # worker: out of the collector's sight, a full collection scans only what requests allocate (it took
        # 100-250 ms per pass here, stalling the event loop: the p99 at concurrency 32)
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.engine.ready()


RecommendationService.mount_asgi_app(Starlette(routes=[Route("/details", _health_details, methods=["GET"])]),
                                     path="/healthz")
# the JSON routes, at the root: BentoML's own routes (probes, /metrics, the OpenAPI document) are matched first
RecommendationService.mount_asgi_app(
    api_routes(MODELS, lambda: bentoml.get_current_service().engine, threads=REQUEST_THREADS,
               batch=CONFIG.serving.request_batch), path="")
# outermost: headers, body size, deadline and bounded error bodies (serving/http_guard.py); then who is calling
RecommendationService.add_asgi_middleware(RequestGuard, max_body_bytes=CONFIG.serving.max_body_bytes,
                                          request_timeout_s=CONFIG.serving.request_timeout_s,
                                          on_reject=count_rejection)
RecommendationService.add_asgi_middleware(BearerAuth)
