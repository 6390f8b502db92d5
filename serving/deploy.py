"""Deploy a serving bundle to Triton safely: new version, load, smoke test, roll back on any failure.

The model repository keeps every version on disk; the ensemble `recommender` is pinned to one version, the
composing models keep the live and the previous version loaded, so a rollout and a rollback swap the
ensemble without a gap. A new version's steps are loaded next to the live ones and smoke-tested one by one
before the ensemble is switched to it (only then does it take traffic), and once more through the ensemble.
History of every deployment: `<model_repository>/deployments.json`.
"""

import fcntl
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from components.ann import ANN_FILE
from components.atomic import write_json_atomic
from components.config import Config
from components.errors import RecsysError
from serving import triton_repo as tr
from serving import triton_server as ts
from serving.triton_admin import admin_key
from serving.triton_client import RecommenderClient

log = logging.getLogger(__name__)

HISTORY = "deployments.json"
SCORE_TOLERANCE = 1e-3
ANN_SMOKE_MIN_RECALL = 0.8  # bench_ann: recall@10 0.98-1.0 at the default efSearch; a smoke list keeps 8 of 10


class DeployError(RecsysError):
    """A deployment or rollback failed; `result` holds what was recorded (the live version is unchanged)."""

    def __init__(self, message: str, result: "DeployResult | None" = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class DeployResult:
    """What one deployment or rollback did."""

    action: str
    version: int
    previous: int | None
    status: str  # active | failed
    model_version: str
    variant: str
    grpc_url: str
    duration_s: float
    smoke: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _settings(config: Config):
    s = config.serving
    return tr.RepoSettings(
        backend="python",
        max_batch_size=s.max_batch_size,
        max_queue_delay_us=s.max_queue_delay_us,
        graph_max_queue_delay_us=s.graph_max_queue_delay_us,
        tower_instances=s.tower_instances,
        ann_min_items=s.ann_min_items,
        ann_max_ef_search=s.ann_max_ef_search,
        ann_target_recall=s.ann_target_recall,
        graph=s.retrieval_layout == "graph",  # the one-graph model beside the ensemble (which deploy smoke-tests)
    )


def _client(config: Config):
    """A client with the admin key ($RECSYS_TRITON_ADMIN_KEY, else the local launcher's key file): deploy,
    rollback and status use model control."""
    s = config.serving
    return RecommenderClient(f"{s.host}:{s.triton_grpc_port}", timeout_s=s.grpc_timeout_s, retries=s.grpc_retries,
                             admin_key=admin_key(s.triton_build_dir))


def read_history(repo_dir: str | Path) -> dict[str, Any]:
    """The deployment history: {"active": version | None, "events": [DeployResult dicts, oldest first]}."""
    path = Path(repo_dir) / HISTORY
    if not path.is_file():
        return {"active": None, "events": []}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DeployError(f"deployment history {path} is not valid JSON: {err}") from err


def _record(repo_dir: Path, result: DeployResult, active: int | None) -> None:
    history = read_history(repo_dir)
    history["active"] = active
    history["events"].append(result.to_dict())
    write_json_atomic(repo_dir / HISTORY, history)


@contextmanager
def _deploy_lock(repo_dir: Path) -> Iterator[None]:
    """One deployment or rollback at a time per model repository (an advisory file lock)."""
    repo_dir.mkdir(parents=True, exist_ok=True)
    with open(repo_dir / ".deploy.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another deployment holds %s; waiting", repo_dir / ".deploy.lock")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stage(client, repo_dir: Path, version: int, keep: list[int], settings) -> None:
    """Load `version` of every composing model next to the versions in `keep`; the ensemble, which carries the
    traffic, is left as it is (its steps stay pinned to the live version)."""
    bundle = tr.version_bundle(repo_dir, version)
    configs = tr.render_all(bundle, version, sorted({version, *keep}), settings)
    tr.write_configs(repo_dir, {m: configs[m] for m in tr.composing(settings)})
    for model in tr.composing(settings):
        client.load(model)


def activate(client, repo_dir: Path, version: int, keep: list[int], settings) -> None:
    """Point the ensemble at `version`; composing models keep `version` and `keep` loaded.

    Composing configs are written on disk first (loading an ensemble reloads its composing models from
    disk); the ensemble is loaded with a config override, so the on-disk ensemble still names the old
    version until persist_active() once the new one has passed its smoke test.
    """
    bundle = tr.version_bundle(repo_dir, version)
    configs = tr.render_all(bundle, version, sorted({version, *keep}), settings)
    tr.write_configs(repo_dir, {m: configs[m] for m in tr.composing(settings)})
    client.load(tr.ENSEMBLE, tr.config_json(configs[tr.ENSEMBLE]))
    if client.active_version() != version:
        raise DeployError(f"Triton did not switch '{tr.ENSEMBLE}' to version {version}")


def persist_active(repo_dir: Path, version: int, keep: list[int], settings) -> None:
    """Write the configs that make `version` the one a restarted server loads."""
    bundle = tr.version_bundle(repo_dir, version)
    tr.write_configs(repo_dir, tr.render_all(bundle, version, sorted({version, *keep}), settings))


def _close_ranking(got_ids, got_scores, want_ids, want_scores, min_recall: float) -> str | None:
    """None if an approximate top-K (the ANN index) agrees with the exact one: as many items, best first, each
    returned item that the exact list holds with its exact score, and at least `min_recall` of the exact items."""
    got_ids, want_ids = np.asarray(got_ids), np.asarray(want_ids)
    got_scores, want_scores = np.asarray(got_scores, np.float64), np.asarray(want_scores, np.float64)
    if got_ids.shape != want_ids.shape:
        return f"{got_ids.size} items returned, {want_ids.size} expected"
    if np.any(np.diff(got_scores) > SCORE_TOLERANCE * np.maximum(1.0, np.abs(got_scores[1:]))):
        return "scores are not best first"
    exact = dict(zip(want_ids.tolist(), want_scores.tolist(), strict=True))
    for item, score in zip(got_ids.tolist(), got_scores.tolist(), strict=True):
        if item in exact and abs(score - exact[item]) > SCORE_TOLERANCE * max(1.0, abs(exact[item])):
            return f"item {item} scored {score:.6f}, expected {exact[item]:.6f}"
    recall = len(set(got_ids.tolist()) & set(exact)) / max(len(exact), 1)
    return None if recall >= min_recall else f"recall {recall:.2f} of the exact top-{len(exact)} (< {min_recall})"


def _same_ranking(got_ids, got_scores, want_ids, want_scores) -> str | None:
    """None if equal (ids may swap only where expected scores tie within the tolerance), else why not."""
    got_ids, want_ids = np.asarray(got_ids), np.asarray(want_ids)
    got_scores, want_scores = np.asarray(got_scores, np.float64), np.asarray(want_scores, np.float64)
    if got_ids.shape != want_ids.shape:
        return f"{got_ids.size} items returned, {want_ids.size} expected"
    tol = SCORE_TOLERANCE * np.maximum(1.0, np.abs(want_scores))
    if np.any(np.abs(got_scores - want_scores) > tol):
        return f"scores differ by up to {np.max(np.abs(got_scores - want_scores)):.2e}"
    for pos in np.flatnonzero(got_ids != want_ids):
        tied = np.abs(want_scores - want_scores[pos]) <= tol[pos]
        if got_ids[pos] not in set(want_ids[tied].tolist()):
            return f"item {got_ids[pos]} at rank {pos + 1}, expected {want_ids[pos]}"
    return None


def smoke_requests(smoke_path: Path) -> list[dict[str, Any]]:
    """Requests of smoke.json: a list, or {"requests": [...]}; expected outputs inline or under "expected"."""
    data = json.loads(smoke_path.read_text(encoding="utf-8"))
    requests = data["requests"] if isinstance(data, dict) else data
    out = []
    for req in requests:
        expected = req.get("expected", req)
        out.append({**req, "item_ids": expected["item_ids"], "scores": expected["scores"]})
    if not out:
        raise DeployError(f"{smoke_path} holds no smoke requests")
    return out


def smoke_test(client, smoke_path: Path, version: int | None = None, steps: bool = False,
               approximate: bool = False) -> list[dict[str, Any]]:
    """Run every smoke request over gRPC against `version` (None: whichever is live); raise DeployError on the
    first mismatch. steps=True calls that version's composing models one by one (before the ensemble routes
    traffic to it); otherwise the ensemble answers. `approximate`: the version's top-K searches an ANN index, so
    each list must hold ANN_SMOKE_MIN_RECALL of the exact items with their exact scores, not the same list."""
    stage_name = "steps" if steps else "ensemble"
    results = []
    for i, req in enumerate(smoke_requests(smoke_path)):
        start = time.perf_counter()
        args = (req["history_item_ids"], req["profile"], req["exclude_item_ids"], int(req["k"]))
        call = client.recommend_steps if steps else client.recommend
        ids, scores = call(*args, version=version)
        why = (_close_ranking(ids, scores, req["item_ids"], req["scores"], ANN_SMOKE_MIN_RECALL) if approximate
               else _same_ranking(ids, scores, req["item_ids"], req["scores"]))
        if why:
            raise DeployError(f"smoke request {i} of {smoke_path} ({stage_name}): {why}")
        results.append({"request": i, "stage": stage_name, "items": int(ids.size),
                        "latency_ms": 1000 * (time.perf_counter() - start)})
    return results


def _require_server(client, config: Config) -> None:
    if not client.server_ready():
        raise DeployError(
            f"no Triton server ready at {client.url}; start one with `recsys serve triton --detach` "
            f"(serving.triton_grpc_port={config.serving.triton_grpc_port})"
        )


def _switch(config: Config, action: str, version: int, previous: int | None, keep: list[int]) -> DeployResult:
    """Activate `version`, smoke-test it, and fall back to `previous` if anything fails."""
    repo = Path(config.serving.model_repository)
    settings = _settings(config)
    manifest = tr.version_bundle(repo, version).manifest
    start = time.perf_counter()
    with _client(config) as client:
        _require_server(client, config)
        result = DeployResult(
            action,
            version,
            previous,
            "failed",
            str(manifest["model_version"]),
            str(manifest["variant"]),
            client.url,
            0.0,
        )
        smoke = repo / tr.ENSEMBLE / str(version) / "smoke.json"
        try:
            # the new version's steps are loaded and smoke-tested before the ensemble sends it any traffic
            stage(client, repo, version, keep, settings)
            approximate = (repo / tr.TOPK / str(version) / ANN_FILE).is_file()  # the catalogue's HNSW index
            result.smoke = smoke_test(client, smoke, version, steps=True, approximate=approximate)
            activate(client, repo, version, keep, settings)
            result.smoke += smoke_test(client, smoke, version, approximate=approximate)
        except Exception as err:  # noqa: BLE001 - whatever failed, the previous version goes back
            result.error = str(err)
            result.duration_s = time.perf_counter() - start
            log.error("%s of version %d failed: %s; restoring version %s", action, version, err, previous)
            _restore(client, repo, previous, settings)
            _record(repo, result, previous)
            raise DeployError(f"{action} of version {version} failed and was rolled back: {err}", result) from err
        persist_active(repo, version, keep, settings)
        result.status = "active"
        result.duration_s = time.perf_counter() - start
        _record(repo, result, version)
    log.info(
        "%s: version %d (%s, %s) is live after %.1f s",
        action,
        version,
        result.variant,
        result.model_version,
        result.duration_s,
    )
    return result


def _restore(client, repo: Path, previous: int | None, settings) -> None:
    """Put the previous version back (or unload everything when there was none)."""
    try:
        if previous is None:
            for model in tr.models_of(settings):
                client.unload(model)
            return
        activate(client, repo, previous, [previous], settings)
        persist_active(repo, previous, [previous], settings)
    except RecsysError as err:
        log.error("restoring version %s also failed: %s", previous, err)


def deploy_bundle(config: Config, bundle_dir: str | Path) -> DeployResult:
    """Write the bundle as a new version, load it, smoke-test it, keep it live or roll back."""
    repo = Path(config.serving.model_repository)
    with _client(config) as client:
        _require_server(client, config)
    with _deploy_lock(repo):
        previous = read_history(repo).get("active")
        version = tr.write_version(bundle_dir, repo, settings=_settings(config))
        return _switch(config, "deploy", version, previous, [previous] if previous else [])


def rollback(config: Config, to_version: int | None = None) -> DeployResult:
    """Make an earlier version live again (default: the one that was live before the current one)."""
    repo = Path(config.serving.model_repository)
    with _deploy_lock(repo):
        return _rollback(config, repo, to_version)


def _rollback(config: Config, repo: Path, to_version: int | None) -> DeployResult:
    history = read_history(repo)
    current = history.get("active")
    if current is None:
        raise DeployError(f"nothing is deployed in {repo}; there is nothing to roll back")
    if to_version is None:
        earlier = [e["version"] for e in history["events"] if e["status"] == "active" and e["version"] != current]
        if not earlier:
            raise DeployError(f"version {current} is the only version ever live in {repo}; no rollback target")
        to_version = earlier[-1]
    if to_version == current:
        raise DeployError(f"version {current} is already live in {repo}")
    if to_version not in tr.versions_on_disk(repo):
        raise DeployError(f"version {to_version} is not in {repo}; on disk: {tr.versions_on_disk(repo)}")
    return _switch(config, "rollback", int(to_version), current, [current])


def restore_active(config: Config) -> int | None:
    """After a (re)start: load the version the history says is live; returns it (None if nothing deployed)."""
    repo = Path(config.serving.model_repository)
    active = read_history(repo).get("active")
    if active is None:
        return None
    with _client(config) as client:
        _require_server(client, config)
        client.load(tr.ENSEMBLE)
        if client.active_version() != active:
            raise DeployError(f"the repository {repo} config does not pin '{tr.ENSEMBLE}' to version {active}")
    log.info("restored version %d of %s", active, tr.ENSEMBLE)
    return int(active)


def status(config: Config) -> dict[str, Any]:
    """Live version per history and per server, versions on disk, the last events."""
    repo = Path(config.serving.model_repository)
    history = read_history(repo)
    with _client(config) as client:
        ready = client.server_ready()
        serving_version = client.active_version() if ready else None
    return {
        "model_repository": str(repo),
        "active": history.get("active"),
        "server_ready": ready,
        "serving_version": serving_version,
        "versions_on_disk": tr.versions_on_disk(repo),
        "last_events": history["events"][-5:],
    }


def ensure_server(config: Config) -> bool:
    """Start a detached Triton server (and restore the live version) unless one answers; True if started."""
    settings = ts.settings_from_config(config)
    if ts.is_ready(settings):
        return False
    ts.start_detached(settings)
    restore_active(config)
    return True
