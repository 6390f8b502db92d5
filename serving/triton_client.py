"""gRPC client of the `recommender` ensemble, shared by the API, deploy and the tests.

One call returns best-first item ids and scores. Timeouts on every call, retries with backoff while
Triton answers UNAVAILABLE, and errors that name the model and the gRPC status. Inference, health and metadata
need no key; model control, model configs and statistics send the admin key (serving.triton_admin) when the
client has one.
"""

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from components.encoders import ProfileEncoder
from components.errors import RecsysError
from components.retrieval_graph import as_batch_of_one
from serving import triton_admin

log = logging.getLogger(__name__)

MODEL = "recommender"
RETRYABLE = ("StatusCode.UNAVAILABLE",)
MAX_MESSAGE_BYTES = 2**31 - 1  # as tritonclient's channel: large item tables and candidate lists fit


class TritonClientError(RecsysError):
    """A Triton call failed; `model` and `status` (the gRPC status, e.g. StatusCode.INVALID_ARGUMENT) say which."""

    def __init__(self, model: str, status: str | None, message: str) -> None:
        self.model = model
        self.status = status or "UNKNOWN"
        super().__init__(f"Triton model '{model}' failed ({self.status}): {message}")


class TritonAdminKeyError(TritonClientError):
    """Triton refused an admin call (model control, config, statistics): the admin key is missing or wrong."""

    def __init__(self, model: str, has_key: bool) -> None:
        why = "was refused: wrong admin key" if has_key else "needs the admin key and the client has none"
        super().__init__(
            model,
            "UNAUTHENTICATED",
            f"{why}; set ${triton_admin.ADMIN_KEY_ENV} to the server's key (on the server's host it is read "
            f"from {triton_admin.ADMIN_KEY_FILE} in serving.triton_build_dir)",
        )


def encode_profile(manifest: dict[str, Any], profile: Mapping[str, Any]) -> list[int]:
    """Profile indices in manifest["profile_fields"] order, by the bundle's own encoder (components.encoders);
    0 (unknown) for missing or unseen values."""
    return ProfileEncoder.from_dict(manifest["profile_encoder"]).encode_one(profile)


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
        admin_key: str | None = None,
        infer_model: str | None = None,
        batch_of_one: bool = False,
    ) -> None:
        """`model_name`: the model whose versions and readiness the client reports; `infer_model`: the one
        `recommend` calls (default the same; `recommender_graph` is the one-graph layout of the same retrieval);
        `batch_of_one`: `infer_model` takes each input and gives each output with a leading dimension of 1 (the
        one graph, which Triton batches), sent and read here as the flat arrays of one request."""
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.model_name = model_name
        self.infer_model = infer_model or model_name
        self.batch_of_one = batch_of_one
        self._admin_headers = triton_admin.grpc_headers(admin_key)
        self._client = grpcclient.InferenceServerClient(url=url)  # health, metadata and model control
        # inference: KServe's ModelInfer message built and read directly (tritonclient's request and result objects
        # cost about a third more CPU per call, on the API's hot path)
        self._channel = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self._model_infer = service_pb2_grpc.GRPCInferenceServiceStub(self._channel).ModelInfer

    def close(self) -> None:
        # drop the gRPC client now: tritonclient closes again in __del__, which fails at interpreter exit
        if self._client is not None:
            self._client.close()
            self._client = None
            self._channel.close()

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, model: str, fn, *args: Any, **kwargs: Any) -> Any:
        return self._attempts(model, partial(fn, *args, **kwargs))

    def _attempts(self, model: str, send: Callable[[], Any], failed: InferenceServerException | None = None) -> Any:
        """send() until it answers, retried with back-off while Triton answers UNAVAILABLE; `failed`: the error of
        a first attempt already made (a call started earlier)."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                if failed is not None and attempt == 0:
                    raise failed
                return send()
            except InferenceServerException as err:
                status = _status(err)
                if triton_admin.is_refusal(err.message() or ""):  # Triton answers UNAVAILABLE: never retried
                    raise TritonAdminKeyError(model, self._admin_headers is not None) from err
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
        version: int | None = None,
        prior_item_ids: Sequence[int] | np.ndarray = (),
        prior_counts: Sequence[float] | np.ndarray = (),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best-first (item_ids int64, scores float32), at most k, excluded ids left out; the items of
        `prior_item_ids` get the bundle's popularity prior of their `prior_counts` (interactions in the prior's window).

        `version`: the deployment version that must answer (its ensemble runs that version's every step); a
        version Triton does not serve is a TritonClientError (StatusCode.NOT_FOUND or UNAVAILABLE), never
        another version's answer. None: whichever version is loaded."""
        return self.infer_raw(_request_arrays(history_item_ids, profile, exclude_item_ids, k, prior_item_ids,
                                              prior_counts), version)

    def start_recommend(
        self,
        history_item_ids: Sequence[int],
        profile: Sequence[int],
        exclude_item_ids: Sequence[int] = (),
        k: int = 10,
        version: int | None = None,
        prior_item_ids: Sequence[int] | np.ndarray = (),
        prior_counts: Sequence[float] | np.ndarray = (),
    ) -> "PendingAnswer":
        """`recommend` started without waiting: its answer (or error) comes from `.result()`. Several started
        calls are in flight at once on the one channel, and Triton's dynamic batcher may serve them together."""
        arrays = _request_arrays(history_item_ids, profile, exclude_item_ids, k, prior_item_ids, prior_counts)
        request = self._request(self.infer_model, self._shaped(arrays), RECOMMEND_OUTPUTS, version)
        return PendingAnswer(self, request, self._model_infer.future(request, timeout=self.timeout_s))

    def infer_raw(self, arrays: dict[str, np.ndarray], version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Send the given arrays (any dtype/shape: the server checks them; with `batch_of_one`, each reshaped to
        [1, n] and the answer flattened)."""
        return self._ranking(self._infer(self.infer_model, self._shaped(arrays), RECOMMEND_OUTPUTS, version))

    def _shaped(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays as `infer_model` takes them (with `batch_of_one`: each [1, n])."""
        return as_batch_of_one({name: np.asarray(array) for name, array in arrays.items()}) if self.batch_of_one \
            else arrays

    def _ranking(self, out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(item ids int64, scores float32) of a `recommend` answer, flat."""
        ids, scores = out["item_ids"].astype(np.int64, copy=False), out["scores"].astype(np.float32, copy=False)
        return (ids.reshape(-1), scores.reshape(-1)) if self.batch_of_one else (ids, scores)

    def recommend_steps(
        self,
        history_item_ids: Sequence[int],
        profile: Sequence[int],
        exclude_item_ids: Sequence[int],
        k: int,
        version: int,
        prior_item_ids: Sequence[int] | np.ndarray = (),
        prior_counts: Sequence[float] | np.ndarray = (),
    ) -> tuple[np.ndarray, np.ndarray]:
        """What the ensemble answers, computed by calling `version` of each of its steps in turn (prep -> user
        tower -> top-K): a version whose steps are loaded is tested before the ensemble routes traffic to it."""
        arrays = _request_arrays(history_item_ids, profile, exclude_item_ids, k, prior_item_ids, prior_counts)
        prep = self._infer("recommender_prep", {n: arrays[n] for n in ("history_item_ids", "profile")},
                           ("history", "profile_index"), version)
        tower = self._infer("recommender_user_tower", {"history": prep["history"], "profile": prep["profile_index"]},
                            ("user_embedding",), version)
        top = self._infer("recommender_topk", {"user_embedding": tower["user_embedding"],
                                               **{n: arrays[n] for n in TOPK_REQUEST_INPUTS}},
                          ("item_ids", "scores"), version)
        return top["item_ids"].astype(np.int64, copy=False), top["scores"].astype(np.float32, copy=False)

    def _infer(
        self, model: str, arrays: dict[str, np.ndarray], output_names: Sequence[str], version: int | None
    ) -> dict[str, np.ndarray]:
        request = self._request(model, arrays, output_names, version)
        return _outputs(model, self._call(model, self._send, request), output_names)

    @staticmethod
    def _request(model: str, arrays: dict[str, np.ndarray], output_names: Sequence[str],
                 version: int | None) -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name=model, model_version="" if version is None else str(version))
        for name, array in arrays.items():
            request.inputs.add(name=name, datatype=_triton_dtype(array), shape=array.shape)
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        for name in output_names:
            request.outputs.add(name=name)
        return request

    def _send(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        """One ModelInfer call; a gRPC error becomes tritonclient's exception (its status, e.g.
        StatusCode.UNAVAILABLE, and Triton's message), as the other calls raise it."""
        try:
            return self._model_infer(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise _server_error(err) from None

    def served_versions(self, name: str | None = None) -> list[int]:
        """Versions of a model that Triton serves now (its metadata: open to every caller)."""
        name = name or self.model_name
        meta = self._call(name, self._client.get_model_metadata, name, as_json=True, client_timeout=self.timeout_s)
        return sorted(int(v) for v in meta.get("versions", []))

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
        kwargs: dict[str, Any] = {"client_timeout": max(self.timeout_s, 300.0), "headers": self._admin_headers}
        if config_json is not None:
            kwargs["config"] = config_json
        self._call(name, self._client.load_model, name, **kwargs)

    def unload(self, name: str) -> None:
        self._call(
            name, self._client.unload_model, name, headers=self._admin_headers, client_timeout=max(self.timeout_s, 60.0)
        )

    def ready_versions(self, name: str | None = None) -> list[int]:
        """Versions of a model that are loaded and READY."""
        name = name or self.model_name
        index = self._call(name, self._client.get_model_repository_index, headers=self._admin_headers, as_json=True)
        return sorted(
            int(m["version"])
            for m in index.get("models", [])
            if m.get("name") == name and m.get("state") == "READY" and m.get("version")
        )

    def active_version(self) -> int | None:
        """The deployment version the ensemble is pinned to, None when it is not loaded.

        Read from the ensemble's metadata (open to every caller): its version policy loads exactly the one
        version that every step is pinned to (serving/templates/recommender.pbtxt.j2)."""
        if not self.model_ready(self.model_name):
            return None
        versions = self.served_versions()
        return versions[0] if len(versions) == 1 else None

    def model_config(self, name: str | None = None) -> dict[str, Any]:
        name = name or self.model_name
        return self._call(
            name, self._client.get_model_config, name, headers=self._admin_headers, as_json=True
        ).get("config", {})

    def statistics(self, name: str | None = None) -> dict[str, Any]:
        name = name or self.model_name
        return self._call(
            name, self._client.get_inference_statistics, model_name=name, headers=self._admin_headers, as_json=True
        )


TOPK_REQUEST_INPUTS = ("exclude_item_ids", "k", "prior_item_ids", "prior_counts")  # what the top-K step reads
RECOMMEND_OUTPUTS = ("item_ids", "scores")


class PendingAnswer:
    """A `recommend` call in flight (RecommenderClient.start_recommend)."""

    def __init__(self, client: RecommenderClient, request: service_pb2.ModelInferRequest, call: grpc.Future) -> None:
        self._client, self._request, self._call = client, request, call

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Best-first (item ids, scores), as `recommend` returns them; its errors and retries, too."""
        client, model = self._client, self._request.model_name
        try:
            response = self._call.result()
        except grpc.RpcError as err:
            response = client._attempts(model, partial(client._send, self._request), failed=_server_error(err))
        return client._ranking(_outputs(model, response, RECOMMEND_OUTPUTS))


def _server_error(err: grpc.RpcError) -> InferenceServerException:
    return InferenceServerException(msg=err.details(), status=str(err.code()), debug_details=err.debug_error_string())


def _outputs(model: str, response: service_pb2.ModelInferResponse,
             output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named outputs of an answer as arrays; TritonClientError when one is missing."""
    out: dict[str, np.ndarray] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=False):
        dtype = triton_to_np_dtype(tensor.datatype)
        if tensor.name in output_names and dtype is not None and dtype is not np.object_:
            out[tensor.name] = np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.shape))
    missing = [name for name in output_names if name not in out]
    if missing:
        raise TritonClientError(model, "INCOMPLETE", f"response lacks {', '.join(missing)}")
    return out


def _request_arrays(
    history_item_ids: Sequence[int], profile: Sequence[int], exclude_item_ids: Sequence[int], k: int,
    prior_item_ids: Sequence[int] | np.ndarray = (), prior_counts: Sequence[float] | np.ndarray = (),
) -> dict[str, np.ndarray]:
    """The ensemble's inputs."""
    return {
        "history_item_ids": np.asarray(list(history_item_ids), dtype=np.int64).reshape(-1),
        "profile": np.asarray(list(profile), dtype=np.int64).reshape(-1),
        "exclude_item_ids": np.asarray(list(exclude_item_ids), dtype=np.int64).reshape(-1),
        "k": np.asarray([k], dtype=np.int32),
        "prior_item_ids": np.asarray(prior_item_ids, dtype=np.int64).reshape(-1),
        "prior_counts": np.asarray(prior_counts, dtype=np.float32).reshape(-1),
    }


def _triton_dtype(array: np.ndarray) -> str:
    dtype = np_to_triton_dtype(array.dtype)
    if dtype is None:
        raise TritonClientError(MODEL, "INVALID_ARGUMENT", f"numpy dtype {array.dtype} has no Triton equivalent")
    return dtype
