"""A data set of another shape, driven only by its declaration: the synthetic shop (string ids, implicit events,
its own user and item attributes) through the training pipeline, Triton, the API and a monitoring report."""

import json
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from components.config import load_config
from components.processes import free_port
from components.schemas import ITEMS, table_path
from components.synth import SynthSpec, write_synthetic
from pipelines.runner import run_pipeline
from pipelines.training import TRAINING
from tests.conftest import TINY_PIPELINE as TINY


def _shop_config(tmp_path: Path):
    paths = write_synthetic(SynthSpec(users=150, items=60, events=3000, days=30, seed=3), tmp_path / "shop")
    places = {
        "paths.data_dir": tmp_path / "data", "paths.artifacts_dir": tmp_path / "artifacts",
        "paths.pipeline_root": tmp_path / "kfp", "features.data_dir": tmp_path / "features",
        "serving.triton_grpc_port": free_port(), "serving.triton_http_port": free_port(),
        "serving.triton_metrics_port": free_port(), "serving.api_port": free_port(),
        "serving.model_repository": tmp_path / "models", "serving.triton_build_dir": tmp_path / "triton",
        "serving.triton_log_file": tmp_path / "triton" / "log", "serving.request_log": tmp_path / "log.sqlite",
        "monitoring.reports_dir": tmp_path / "monitoring",
        "model.ensemble_members": 2,  # the default kind of model (an ensemble) through every step, Triton included
    }
    return load_config(paths["config"], [f"{k}={v}" for k, v in {**TINY, **places}.items()])


@pytest.mark.integration
@pytest.mark.slow
def test_the_shop_runs_end_to_end_from_its_declaration(tmp_path):
    from monitoring.reports import generate_reports
    from serving.api_server import api_url, auth_headers, start_api, stop_api
    from serving.triton_server import settings_from_config, stop_detached

    config = _shop_config(tmp_path)
    assert config.dataset.user_id.type == "string" and "segment" in config.dataset.user_attributes
    try:
        tasks = run_pipeline(TRAINING, config)["artifacts"]
        assert "deploy-op" in tasks, "the gate is open in this test: the model must be deployed"
        trained = json.loads((Path(tasks["train-op"]["model"]) / "model_config.json").read_text())
        seeds = [config.train.seed, config.train.seed + 1]
        assert trained["ensemble_members"] == 2 and trained["member_seeds"] == seeds
        start_api(config, detach=True)
        maps = Path(config.paths.data_dir) / "id_maps"
        users = pd.read_parquet(maps / "user_ids.parquet")["external_id"]
        skus = pd.read_parquet(maps / "item_ids.parquet")["external_id"]
        items = pd.read_parquet(table_path(tasks["validate-op"]["validated"], ITEMS))
        category = items["category"].value_counts().index[0]
        with httpx.Client(base_url=api_url(config), timeout=30, headers=auth_headers(config)) as http:
            openapi = http.get("/docs.json").text  # the declared fields are the documented fields
            assert all(f'"{name}"' in openapi for name in ("category", "price_min", "price_max", "segment", "brand"))
            assert '"genres"' not in openapi and '"occupation"' not in openapi
            # a filter on the shop's own attributes, answered with its own ids and displayed fields
            body = http.post("/recommend", json={"user_id": users.iloc[0], "k": 5,
                                                 "filters": {"category": [category], "price_max": 500}})
            assert body.status_code == 200, body.text
            answer = body.json()
            assert answer["user_id"] == users.iloc[0] and not answer["cold_start"]
            assert answer["items"] and all(i["item_id"].startswith("SKU-") for i in answer["items"])
            assert all(i["category"] == category and i["price"] <= 500 for i in answer["items"])
            # a new customer with the shop's own profile fields
            cold = http.post("/recommend", json={"user_id": "c-brand-new", "k": 3,
                                                 "profile": {"segment": "vip", "country": "DE", "tenure_days": 12}})
            assert cold.status_code == 200 and cold.json()["cold_start"]
            assert {i["source"] for i in cold.json()["items"]} == {"model"}
            # fields of another data set are refused by name
            for bad, field in (({"user_id": "c-1", "filters": {"genres": ["Drama"]}}, "genres"),
                               ({"user_id": "c-1", "profile": {"age": 30}}, "age"),
                               ({"user_id": 17}, "user_id")):
                refused = http.post("/recommend", json=bad)
                assert 400 <= refused.status_code < 500 and field in refused.text, (bad, refused.text)
            # traffic, then interactions that follow it: the requests become evaluable
            for user in users.iloc[:40]:
                rec = http.post("/recommend", json={"user_id": user, "k": 10}).json()
                pushed = http.post("/interactions", json={"user_id": user, "item_id": rec["items"][0]["item_id"]})
                assert pushed.status_code == 200 and pushed.json()["pushed"], pushed.text
                assert all(i.startswith("SKU-") for i in pushed.json()["recent_item_ids"])
            time.sleep(1.5)
            http.post("/interactions", json={"user_id": users.iloc[0], "item_id": skus.iloc[0]})
        summary = generate_reports(config, tasks["validate-op"]["validated"], config.serving.request_log,
                                 tmp_path / "report")
        groups = summary["fairness"]["groups"]
        assert set(groups) == {"segment", "tenure_days"}
        segments = groups["segment"]["groups"]
        assert set(segments) <= {"new", "regular", "vip", "unknown"}
        assert sum(g["requests"] for g in segments.values()) >= 40
        assert (tmp_path / "report" / "index.html").exists()
    finally:
        stop_api(config)
        stop_detached(settings_from_config(config))
