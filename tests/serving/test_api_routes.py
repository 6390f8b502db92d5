"""The API routes' request handling without a server: the OpenAPI request bodies and the strict JSON parsing, for
each data set shape (the routes with the real engine, Triton and Feast: test_service.py, test_hostile_input.py)."""

import json

import pytest
from starlette.responses import JSONResponse

from components.config import load_config
from serving.api_models import api_models
from serving.api_routes import _parsed, request_body


@pytest.fixture()
def models(source_dataset):
    return api_models(load_config(source_dataset.config_path).dataset)


def _refusal(answer) -> tuple[int, list[str]]:
    assert isinstance(answer, JSONResponse)
    return answer.status_code, [".".join(map(str, f["loc"])) for f in json.loads(answer.body)["detail"]]


def test_the_documented_request_bodies_are_self_contained_and_declare_every_field(models, source_dataset):
    schema = load_config(source_dataset.config_path).dataset
    for model in (models.RecommendRequest, models.InteractionRequest):
        text = json.dumps(request_body(model))
        assert "$ref" not in text and "$defs" not in text  # nested models inlined: the document resolves alone
        assert all(f'"{name}"' in text for name in model.model_fields)
    recommend = json.dumps(request_body(models.RecommendRequest))
    assert all(f'"{name}"' in recommend for name in schema.user_attributes)  # the profile's declared fields


def test_bodies_are_parsed_as_strict_json(models, source_dataset):
    user = "u-1" if load_config(source_dataset.config_path).dataset.user_id.type == "string" else 1
    good = json.dumps({"user_id": user, "k": 3}).encode()
    assert _parsed(models.RecommendRequest, good).k == 3
    assert _refusal(_parsed(models.RecommendRequest, b"")) == (400, ["user_id"])  # no body: the field it lacks
    assert _refusal(_parsed(models.RecommendRequest, b"\xef\xbb\xbf" + good))[0] == 400  # no byte-order mark
    assert _refusal(_parsed(models.RecommendRequest, good.replace(b"3", b"NaN")))[0] == 400
    assert _refusal(_parsed(models.RecommendRequest, json.dumps({"user_id": True}).encode())) == (400, ["user_id"])
    status, where = _refusal(_parsed(models.RecommendRequest, json.dumps({"user_id": user, "kk": 3}).encode()))
    assert status == 400 and where == ["kk"]  # an unknown field is named
