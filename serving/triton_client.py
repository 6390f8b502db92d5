"""gRPC client of the `recommender` ensemble, shared by the API, deploy and the tests.

One call returns best-first item ids and scores. Timeouts on every call, retries with backoff while
Triton answers UNAVAILABLE, and errors that name the model and the gRPC status.
"""

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from components.encoders import ProfileEncoder
from components.errors import RecsysError

log = logging.getLogger(__name__)

MODEL = "recommender"
RETRYABLE = ("StatusCode.UNAVAILABLE",)


class TritonClientError(RecsysError):
    """A Triton call failed; `model` and `status` (the gRPC status, e.g. StatusCode.INVALID_ARGUMENT) say which."""

    def __init__(self, model: str, status: str | None, message: str) -> None:
        self.model = model
        self.status = status or "UNKNOWN"
        super().__init__(f"Triton model '{model}' failed ({self.status}): {message}")


def encode_profile(manifest: dict[str, Any], profile: Mapping[str, Any]) -> list[int]:
    """Profile indices in manifest["profile_fields"] order, by the bundle's own encoder (components.encoders);
    0 (unknown) for missing or unseen values."""
    return ProfileEncoder.from_dict(manifest["profile_encoder"]).encode([dict(profile)])[0].tolist()


def _status(err: InferenceServerException) -> str | None:
    return err.status() if callable(getattr(err, "status", None)) else None


class RecommenderClient:
    """Synchronous gRPC client of Triton's `recommender` ensemble plus model-control helpers."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 2.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        model_name: str = MODEL,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.model_name = model_name
        self._client = grpcclient.InferenceServerClient(url=url)

    def close(self) -> None:
        # drop the gRPC client now: tritonclient closes again in __del__, which fails at interpreter exit
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, model: str, fn, *args: Any, **kwargs: Any) -> Any:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except InferenceServerException as err:
                status = _status(err)
                if status in RETRYABLE and attempt < self.retries:
                    log.debug("Triton %s unavailable (attempt %d): %s; retrying", model, attempt + 1, err.message())
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise TritonClientError(model, status, err.message() or str(err)) from err
        raise AssertionError("unreachable")

    def recommend(
        self,
        history_item_ids: Sequence[int],
        profile: Sequence[int],
        exclude_item_ids: Sequence[int] = (),
        k: int = 10,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best-first (item_ids int64, scores float32), at most k, excluded ids left out."""
        arrays = {
            "history_item_ids": np.asarray(list(history_item_ids), dtype=np.int64).reshape(-1),
            "profile": np.asarray(list(profile), dtype=np.int64).reshape(-1),
            "exclude_item_ids": np.asarray(list(exclude_item_ids), dtype=np.int64).reshape(-1),
            "k": np.asarray([k], dtype=np.int32),
        }
        return self.infer_raw(arrays)

    def infer_raw(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Send the given arrays as they are (any dtype/shape: the server checks them)."""
        inputs = []
        for name, array in arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape), _triton_dtype(array))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput("item_ids"), grpcclient.InferRequestedOutput("scores")]
        result = self._call(
            self.model_name,
            self._client.infer,
            self.model_name,
            inputs=inputs,
            outputs=outputs,
            client_timeout=self.timeout_s,
        )
        ids = result.as_numpy("item_ids")
        scores = result.as_numpy("scores")
        if ids is None or scores is None:
            raise TritonClientError(self.model_name, "INCOMPLETE", "response lacks item_ids or scores")
        return ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)

    # -- model control -------------------------------------------------------------------------------------
    def server_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready(client_timeout=self.timeout_s))
        except InferenceServerException:
            return False

    def model_ready(self, name: str | None = None, version: int | str = "") -> bool:
        try:
            name = name or self.model_name
            return bool(self._client.is_model_ready(name, str(version), client_timeout=self.timeout_s))
        except InferenceServerException:
            return False

    def load(self, name: str, config_json: str | None = None) -> None:
        """Load (or reload) a model, optionally with a config override (Triton's JSON model config)."""
        kwargs: dict[str, Any] = {"client_timeout": max(self.timeout_s, 300.0)}
        if config_json is not None:
            kwargs["config"] = config_json
        self._call(name, self._client.load_model, name, **kwargs)

    def unload(self, name: str) -> None:
        self._call(name, self._client.unload_model, name, client_timeout=max(self.timeout_s, 60.0))

    def ready_versions(self, name: str | None = None) -> list[int]:
        """Versions of a model that are loaded and READY."""
        name = name or self.model_name
        index = self._call(name, self._client.get_model_repository_index, as_json=True)
        return sorted(
            int(m["version"])
            for m in index.get("models", [])
            if m.get("name") == name and m.get("state") == "READY" and m.get("version")
        )

    def active_version(self) -> int | None:
        """The deployment version the ensemble is pinned to, None when it is not loaded."""
        if not self.model_ready(self.model_name):
            return None
        cfg = self._call(self.model_name, self._client.get_model_config, self.model_name, as_json=True)
        steps = cfg.get("config", {}).get("ensemble_scheduling", {}).get("step", [])
        versions = {int(s.get("model_version", -1)) for s in steps}
        return versions.pop() if len(versions) == 1 else None

    def model_config(self, name: str | None = None) -> dict[str, Any]:
        name = name or self.model_name
        return self._call(name, self._client.get_model_config, name, as_json=True).get("config", {})

    def statistics(self, name: str | None = None) -> dict[str, Any]:
        name = name or self.model_name
        return self._call(name, self._client.get_inference_statistics, model_name=name, as_json=True)


def _triton_dtype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    dtype = np_to_triton_dtype(array.dtype)
    if dtype is None:
        raise TritonClientError(MODEL, "INVALID_ARGUMENT", f"numpy dtype {array.dtype} has no Triton equivalent")
    return dtype
