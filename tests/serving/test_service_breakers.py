"""Which failures trip a dependency's breaker (serving.engine.dependency_down), on errors a real Triton server
gives: an outage (nothing listening, a call past its deadline, the model not loaded) does; an error about one
request's values (INVALID_ARGUMENT, a ValueError) does not, so one bad request never degrades everyone."""

import numpy as np
import pytest

from components.processes import free_port
from serving import deploy
from serving.engine import dependency_down
from serving.triton_client import RecommenderClient, TritonClientError

pytestmark = pytest.mark.integration

GOOD = {"history_item_ids": np.array([1, 2], np.int64), "profile": np.array([1, 1, 1], np.int64),
        "exclude_item_ids": np.array([], np.int64), "k": np.array([5], np.int32),
        "prior_item_ids": np.array([], np.int64), "prior_counts": np.array([], np.float32)}


def _failure(url: str, arrays: dict, timeout_s: float = 10.0, model: str = "recommender") -> TritonClientError:
    with RecommenderClient(url, timeout_s=timeout_s, retries=0, model_name=model) as client:
        with pytest.raises(TritonClientError) as caught:
            client.infer_raw(arrays)
    return caught.value


def test_only_outages_trip_the_triton_breaker(triton, bundles):
    config, _ = triton
    deploy.deploy_bundle(config, bundles["a"])
    url = f"{config.serving.host}:{config.serving.triton_grpc_port}"

    refused = _failure(url, {**GOOD, "k": np.array([0], np.int32)})  # this request's k
    assert "INVALID_ARGUMENT" in refused.status and not dependency_down(refused)
    wrong_type = _failure(url, {**GOOD, "history_item_ids": np.array([1.0], np.float32)})
    assert not dependency_down(wrong_type)

    nobody = _failure(f"127.0.0.1:{free_port()}", GOOD)  # nothing listens there
    assert "UNAVAILABLE" in nobody.status and dependency_down(nobody)
    late = _failure(url, GOOD, timeout_s=1e-6)
    assert "DEADLINE_EXCEEDED" in late.status and dependency_down(late)
    missing = _failure(url, GOOD, model="no_such_model")
    assert dependency_down(missing), missing.status


@pytest.mark.parametrize(("error", "down"), [
    (TimeoutError("no answer from the feature store within 1.0 s"), True),
    (ConnectionRefusedError(111, "Connection refused"), True),
    (OSError("network unreachable"), True),
    (RuntimeError("redis client gave up"), True),
    (ValueError("Out of bounds nanosecond timestamp"), False),
    (TypeError("unsupported operand"), False),
    (KeyError("recent_item_ids"), False),
    (OverflowError("date value out of range"), False),
])
def test_feature_store_failures(error, down):
    assert dependency_down(error) is down
