"""The gRPC client's error handling without a server: retries with backoff on UNAVAILABLE, clear errors."""

import time

import pytest

from components.processes import free_port
from serving.triton_client import RecommenderClient, TritonClientError


def test_unreachable_server_is_retried_then_reported():
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    with RecommenderClient(url, timeout_s=1.0, retries=2, backoff_s=0.1) as client:
        start = time.perf_counter()
        with pytest.raises(TritonClientError) as err:
            client.recommend([1, 2], [0, 0, 0], [], 5)
        elapsed = time.perf_counter() - start
        assert not client.server_ready() and not client.model_ready()
    assert err.value.model == "recommender" and err.value.status == "StatusCode.UNAVAILABLE"
    assert "Triton model 'recommender' failed (StatusCode.UNAVAILABLE)" in str(err.value)
    assert elapsed >= 0.3  # two backoffs: 0.1 s + 0.2 s


def test_unsupported_dtype_is_reported_before_sending():
    import numpy as np

    with RecommenderClient(f"127.0.0.1:{free_port()}", retries=0) as client:
        with pytest.raises(TritonClientError, match="no Triton equivalent"):
            client.infer_raw({"history_item_ids": np.array([1 + 2j])})
