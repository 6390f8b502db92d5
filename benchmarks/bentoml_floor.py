"""The floor of the API layer: a BentoML service laid out like the API (serving/service.py: the JSON route a FastAPI
app mounted at the root, the request guard in front, the same server settings) whose /recommend does nothing but
validate a request and return ten fixed items. benchmarks/bench_serving.py loads it like the API, so the difference
between the two is what the recommendation logic (and the bearer-token check) costs per request.

    .venv/bin/bentoml serve benchmarks.bentoml_floor:FloorService --port 3999
"""

import bentoml
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from serving.http_guard import JSON_ROUTES, RequestGuard


class FloorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    user_id: int
    k: int = Field(10, ge=1, le=100)


class FloorItem(BaseModel):
    item_id: int
    rank: int
    score: float


class FloorResponse(BaseModel):
    user_id: int
    items: list[FloorItem]


ITEMS = [FloorItem(item_id=i, rank=i + 1, score=1.0 / (i + 1)) for i in range(10)]
app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None,
              telemetry={"tracing": False, "metrics": False, "logs": False})


@app.post("/recommend")
async def recommend(request: Request) -> Response:
    """Ten fixed items (no features, no model, no log)."""
    try:
        body = FloorRequest.model_validate_json(await request.body() or b"{}")
    except ValueError as err:
        return JSONResponse({"error": str(err)}, status_code=400)
    return Response(FloorResponse(user_id=body.user_id, items=ITEMS[: body.k]).model_dump_json(),
                    media_type="application/json")


@bentoml.service(name="recsys_floor", workers=1, threads=1, resources={"cpu": "1"},  # as serving.request_threads
                 logging={"access": {"enabled": False}}, tracing={"excluded_urls": list(JSON_ROUTES)})
class FloorService:
    """POST /recommend (mounted below)."""


FloorService.mount_asgi_app(app, path="")
FloorService.add_asgi_middleware(RequestGuard, max_body_bytes=65536, request_timeout_s=2.0)
