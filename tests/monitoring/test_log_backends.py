"""Monitoring reads either request log backend: the same world logged to SQLite and to PostgreSQL gives the
same monitoring data (windows, requests, recommendations, interactions)."""

import uuid
from pathlib import Path

import pandas as pd
import pytest

from components.request_log import RequestRecord
from components.request_logs import open_request_log
from monitoring.data import load_monitoring_data
from tests.monitoring.world import make_world, world_config

pytestmark = pytest.mark.integration


def test_monitoring_data_is_the_same_from_postgres(tmp_path: Path, postgres) -> None:
    canonical, log_path = make_world(tmp_path, shift=True)
    url = postgres.create_database(f"world_{uuid.uuid4().hex[:12]}")
    with open_request_log(log_path) as sqlite_log, open_request_log(url) as pg_log:
        frames = [sqlite_log.requests_frame(), sqlite_log.interactions_frame()]
        writer = pd.DataFrame({"user_id": frames[1]["user_id"], "item_id": frames[1]["item_id"],
                               "rating": frames[1]["rating"], "event_timestamp": frames[1]["event_timestamp"]})
        pg_log.append_requests([_record(row) for row in frames[0].itertuples(index=False)])
        pg_log.append_interactions(writer)
    config = world_config(tmp_path)
    from_sqlite = load_monitoring_data(config, canonical, log_path)
    from_pg = load_monitoring_data(config, canonical, url)
    assert from_pg.windows.as_dict() == from_sqlite.windows.as_dict()
    for name in ("current_requests", "baseline_requests", "current_recommendations", "baseline_recommendations",
                 "current_interactions", "outcome_interactions"):
        pd.testing.assert_frame_equal(getattr(from_pg, name), getattr(from_sqlite, name), obj=name)
    assert len(from_pg.current_requests) > 0 and len(from_pg.current_interactions) > 0


def _record(row) -> RequestRecord:
    return RequestRecord(row.request_id, row.ts.to_pydatetime(), row.user_id, row.k, row.exclude_seen, row.filters,
                         row.profile, row.item_ids, row.scores, row.model_version, row.degraded, row.cold_start,
                         row.latency_ms)
