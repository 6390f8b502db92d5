"""Triton model repository: the `recommender` ensemble (prep -> user tower -> top-K) built from a serving bundle.

The Python models' steps are `components.bundle_ops`, copied into each version; `components.ensemble` runs the
same steps in process.

Each deployment is a numbered version written completely (staged in a hidden folder, then renamed) into
every model of the ensemble; older versions stay on disk for rollback. Configs come from one set of Jinja
templates, rendered for the Python backend (embedded server) or the native `onnxruntime_onnx` platform (GPU).
"""

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from components import bundle_ops
from components.ann import AnnParams, tower_queries, write_item_index
from components.atomic import fsync_dir, write_atomic
from components.errors import RecsysError
from components.retrieval_graph import build_graph
from components.schemas import read_bundle

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")
ENSEMBLE = "recommender"
PREP = "recommender_prep"
TOWER = "recommender_user_tower"
TOPK = "recommender_topk"
COMPOSING = (PREP, TOWER, TOPK)
MODELS = (ENSEMBLE, *COMPOSING)
GRAPH = "recommender_graph"  # the one-graph layout (components.retrieval_graph), written when RepoSettings.graph
Backend = Literal["python", "onnxruntime_onnx"]
OPS_FILE = "bundle_ops.py"  # components/bundle_ops.py, copied beside each Python model (loaded there by path)


class RepositoryError(RecsysError):
    """The Triton model repository or a generated config is not usable."""


@dataclass(frozen=True)
class Bundle:
    """A checked serving bundle (contract C5)."""

    path: Path
    manifest: dict[str, Any]
    n_items: int
    embedding_dim: int
    max_seq_len: int
    profile_size: int


@dataclass(frozen=True)
class RepoSettings:
    """How the configs are rendered (backend, batching, instances)."""

    backend: Backend = "python"
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (8, 16)
    max_queue_delay_us: int = 500
    graph_max_queue_delay_us: int = 0  # the one graph's batcher (bench_serving --graph-queue-delays measures it)
    tower_instances: int = 1
    step_instances: int = 1
    gpus: tuple[int, ...] = (0,)
    ann_min_items: int = 100_000  # catalogues from this size get an HNSW item index (components.ann)
    ann_max_ef_search: int = 1024  # the largest efSearch the deploy-time calibration tries
    ann_target_recall: float = 0.95  # recall@10 against exact search the calibration must reach
    graph: bool = False  # also write `recommender_graph`: the same retrieval as one ONNX graph, one hop
    extra: dict[str, Any] = field(default_factory=dict)


def load_bundle(bundle_dir: str | Path) -> Bundle:
    """Read and cross-check a serving bundle; raises BundleError naming the file and the problem."""
    path = Path(bundle_dir)
    manifest, ids, emb = read_bundle(path)
    return Bundle(
        path=path,
        manifest=manifest,
        n_items=int(ids.shape[0]),
        embedding_dim=int(emb.shape[1]),
        max_seq_len=int(manifest["max_seq_len"]),
        profile_size=len(manifest["profile_fields"]),
    )


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )


def render_config(model: str, bundle: Bundle, active: int, versions: list[int], settings: RepoSettings) -> str:
    """config.pbtxt text of one model, checked against Triton's ModelConfig schema."""
    if model not in (*MODELS, GRAPH):
        raise RepositoryError(f"unknown model '{model}'; the repository holds {', '.join(MODELS)}")
    # composing models of the embedded repository hold several versions at once (rollout, rollback), and a
    # config is shared by all versions: leave the sizes free there; the GPU repository pins them for the ORT backend
    fixed = settings.backend != "python" or model in (ENSEMBLE, GRAPH)
    text = (
        _environment()
        .get_template(f"{model}.pbtxt.j2")
        .render(
            profile_size=bundle.profile_size if fixed else -1,
            max_seq_len=bundle.max_seq_len if fixed else -1,
            embedding_dim=bundle.embedding_dim if fixed else -1,
            active=active,
            versions=sorted(set(versions)),
            backend=settings.backend,
            max_batch_size=settings.max_batch_size,
            preferred_batch_sizes=list(settings.preferred_batch_sizes),
            max_queue_delay_us=settings.max_queue_delay_us,
            graph_max_queue_delay_us=settings.graph_max_queue_delay_us,
            tower_instances=settings.tower_instances,
            step_instances=settings.step_instances,
            gpus=list(settings.gpus),
        )
    )
    parse_config(text, where=f"{model} config")
    return text


def parse_config(text: str, where: str = "config") -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text with Triton's own protobuf schema; raises RepositoryError on any mistake."""
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as err:
        raise RepositoryError(f"{where} is not a valid Triton model config: {err}") from err


def config_json(text: str) -> str:
    """The JSON form Triton's load API accepts as a config override."""
    return json_format.MessageToJson(parse_config(text), preserving_proto_field_name=True)


def render_all(bundle: Bundle, active: int, versions: list[int], settings: RepoSettings) -> dict[str, str]:
    """Configs of all four models (five with the graph): the ensemble pinned to `active`, composing models (and the
    graph) loading `versions`."""
    return {model: render_config(model, bundle, active, versions, settings) for model in models_of(settings)}


def models_of(settings: RepoSettings) -> tuple[str, ...]:
    """Every model of the repository (the graph when it is written)."""
    return (*MODELS, GRAPH) if settings.graph else MODELS


def composing(settings: RepoSettings) -> tuple[str, ...]:
    """The models that load every kept version (the ensemble's steps, and the graph when it is written)."""
    return (*COMPOSING, GRAPH) if settings.graph else COMPOSING


def versions_on_disk(repo_dir: str | Path, model: str = ENSEMBLE) -> list[int]:
    """Complete version numbers (the ensemble's version folder is written last, so it marks completeness)."""
    folder = Path(repo_dir) / model
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(repo_dir: str | Path) -> int:
    """One more than any version folder present in any model (partial writes included)."""
    return max([0, *(v for m in MODELS for v in versions_on_disk(repo_dir, m))]) + 1


def _version_files(bundle: Bundle, model: str, settings: RepoSettings) -> dict[str, Path]:
    """What goes into one model's version folder: target name -> source file."""
    py = TEMPLATES / "python"
    src = bundle.path
    ops = {OPS_FILE: Path(bundle_ops.__file__)}  # the very module the in-process runtimes import
    if model == ENSEMBLE:
        return {"manifest.json": src / "manifest.json", "smoke.json": src / "smoke.json"}
    if model == GRAPH:  # model.onnx is built into the version folder (write_version)
        return {**ops, "model.py": py / "graph_model.py"} if settings.backend == "python" else {}
    if model == PREP:
        ops["model.py"] = py / "prep_model.py"
        return {**ops, "item_ids.npy": src / "item_ids.npy", "manifest.json": src / "manifest.json"}
    if model == TOPK:
        ops["model.py"] = py / "topk_model.py"
        return {**ops, "item_ids.npy": src / "item_ids.npy", "item_embeddings.npy": src / "item_embeddings.npy",
                "manifest.json": src / "manifest.json"}
    files = {"model.onnx": src / "user_tower.onnx"}
    if (src / "user_tower.onnx.data").is_file():
        files["user_tower.onnx.data"] = src / "user_tower.onnx.data"  # external weights keep their name
    if settings.backend == "python":
        files.update({**ops, "model.py": py / "user_tower_model.py"})
    return files


def write_configs(repo_dir: str | Path, configs: dict[str, str]) -> None:
    """Replace each model's config.pbtxt atomically (Triton reads it only when a model is loaded)."""
    for model, text in configs.items():
        folder = Path(repo_dir) / model
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "config.pbtxt", text)


def write_version(
    bundle_dir: str | Path, repo_dir: str | Path, settings: RepoSettings | None = None, version: int | None = None
) -> int:
    """Write the bundle as a new numbered version of every model; returns the version number.

    Each model's folder is staged under a hidden name and renamed into place; the ensemble's comes last,
    so a version listed by versions_on_disk() is complete. Configs on disk are written only for a fresh
    repository (deploy rewrites them once a version is live).
    """
    settings = settings or RepoSettings()
    bundle = load_bundle(bundle_dir)
    repo = Path(repo_dir)
    version = version or next_version(repo)
    if any((repo / m / str(version)).exists() for m in MODELS):
        raise RepositoryError(f"version {version} already exists in {repo}; versions are never overwritten")
    staged: list[tuple[Path, Path]] = []
    try:
        for model in (*COMPOSING, *((GRAPH,) if settings.graph else ()), ENSEMBLE):
            stage = repo / model / f".staging-{version}-{uuid.uuid4().hex[:8]}"
            stage.mkdir(parents=True)
            staged.append((stage, repo / model / str(version)))
            for name, source in _version_files(bundle, model, settings).items():
                shutil.copy2(source, stage / name)
            if model == GRAPH:
                build_graph(bundle.path, stage / "model.onnx")
            if model == TOPK and bundle.n_items >= settings.ann_min_items:
                write_item_index(stage, np.load(stage / "item_embeddings.npy"),
                                 AnnParams(ef_search=settings.ann_max_ef_search),
                                 queries=tower_queries(bundle.path), target_recall=settings.ann_target_recall)
        for stage, final in staged:
            os.rename(stage, final)
            fsync_dir(final.parent)
    except OSError as err:
        for stage, _ in staged:
            shutil.rmtree(stage, ignore_errors=True)
        raise RepositoryError(f"could not write version {version} into {repo}: {err}") from err
    if not all((repo / m / "config.pbtxt").exists() for m in models_of(settings)):
        write_configs(repo, render_all(bundle, version, [version], settings))
    log.info(
        "wrote version %d of %s (%s, %s) into %s", version, ENSEMBLE, bundle.manifest["variant"], bundle.path, repo
    )
    return version


def version_bundle(repo_dir: str | Path, version: int) -> Bundle:
    """The bundle a written version was made from, read back from the repository."""
    repo = Path(repo_dir)
    manifest_path = repo / ENSEMBLE / str(version) / "manifest.json"
    if not manifest_path.is_file():
        raise RepositoryError(f"version {version} is not in {repo} ({manifest_path} missing)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    emb = np.load(repo / TOPK / str(version) / "item_embeddings.npy", mmap_mode="r")
    return Bundle(
        path=repo / ENSEMBLE / str(version),
        manifest=manifest,
        n_items=int(emb.shape[0]),
        embedding_dim=int(emb.shape[1]),
        max_seq_len=int(manifest["max_seq_len"]),
        profile_size=len(manifest["profile_fields"]),
    )


def build_cluster_repository(bundle_dir: str | Path, out_dir: str | Path, gpus: tuple[int, ...] = (0,)) -> Path:
    """A repository for the official Triton image: the user tower on the native onnxruntime_onnx GPU backend, and
    the whole retrieval as one graph on the same backend (`recommender_graph`, no Python)."""
    settings = RepoSettings(backend="onnxruntime_onnx", max_batch_size=256, preferred_batch_sizes=(32, 64), gpus=gpus,
                            graph=True)
    write_version(bundle_dir, out_dir, settings=settings, version=1)
    return Path(out_dir)
