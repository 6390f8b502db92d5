"""The floor of the API layer: a BentoML service with the API's settings whose /recommend does nothing but
validate a request and return ten fixed items. benchmarks/bench_serving.py loads it like the API, so the
difference between the two is what the recommendation logic costs per request.

    .venv/bin/bentoml serve benchmarks.bentoml_floor:FloorService --port 3999
"""

from typing import Any

import bentoml
from pydantic import BaseModel, Field


class FloorRequest(BaseModel):
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


@bentoml.service(name="recsys_floor", workers=1, threads=8, resources={"cpu": "1"},
                 logging={"access": {"enabled": False}})
class FloorService:
    """POST /recommend: ten fixed items (no features, no model, no log)."""

    @bentoml.api(route="/recommend", input_spec=FloorRequest)
    def recommend(self, **body: Any) -> FloorResponse:
        return FloorResponse(user_id=body["user_id"], items=ITEMS[: body["k"]])
