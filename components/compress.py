"""Compression step: the trained model (contract C4) becomes ONNX serving variants, measured side by side, and the
best one that keeps its quality becomes the serving bundle (contract C5).

Variants (each = user tower + item text encoder + item-embedding table):
- fp32: the user tower exported with `components.model.export_user_tower_onnx`, MiniLM (mean pooling + L2 norm)
  exported with torch's ONNX exporter; the model's own item embeddings.
- int8: ONNX Runtime dynamic quantization (per-channel int8 weights) of both networks.
- pruned: L1 unstructured magnitude pruning of every Linear layer (two-tower model and text encoder), made
  permanent. Zeros stored densely: the files keep their size and dense kernels do not get faster.
- distilled: a text encoder with `compress.distill_layers` transformer layers, initialised from the teacher's
  first layers and trained to match the teacher's embeddings of the catalogue texts.
A variant's item embeddings are recomputed through the model's item tower from its own text encoder, and its
user tower is exported over that table, so the bundle's parts always agree. Every variant is timed with ONNX
Runtime (1 intra-op thread, interleaved runs, median) and scored on the validation split (NDCG@10, the evaluator's
ranking). The gate keeps the fastest variant within `compress.ndcg_tolerance` (relative) of fp32.

This module is the step (run_compress, compress_op) and the bundle it writes; the parts live beside it:
compress_export (ONNX export, quantization, text encoding), compress_variants (building the variants),
compress_gate (measurement and gate), compress_report (comparison.json, chart, report.html).
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.bundle_ops import PRIOR_KEY
from components.compress_export import TEXT_ENCODER_FILE, TEXT_INPUTS, TEXT_OUTPUT, TOKENIZER_DIR, CompressError
from components.compress_gate import METRIC, choose_variant, measure, targets_check, validation_task
from components.compress_report import write_report
from components.compress_variants import REFERENCE, Variant, build_variants
from components.config import Config
from components.encoders import PROFILE_ENCODER_FILE
from components.ensemble import EnsembleReference
from components.evaluation_types import EvalData
from components.item_text import model_item_texts
from components.kfp_support import step
from components.schemas import BundleError, read_bundle, read_tables

log = logging.getLogger(__name__)


def smoke_requests(task: EvalData, prepare: Any, item_ids: np.ndarray, k: int = 10) -> list[dict[str, Any]]:
    """A few requests covering the serving cases: long history (truncated), short history with -1 padding and an
    unknown id, profile only (no history), and no exclusions."""
    lengths = np.array([len(h) for h in task.histories])
    _, profiles = prepare.tower_inputs(task.users, task.histories)
    long_u, short_u = int(np.argmax(lengths)), int(np.argmin(lengths))
    unknown = int(np.max(item_ids)) + 1000
    short = [-1, -1, *task.histories[short_u][-3:].tolist(), unknown]
    return [
        {"history_item_ids": task.histories[long_u].tolist(), "profile": profiles[long_u].tolist(),
         "exclude_item_ids": task.histories[long_u].tolist(), "k": k},
        {"history_item_ids": short, "profile": profiles[short_u].tolist(), "exclude_item_ids": short, "k": k},
        {"history_item_ids": [], "profile": profiles[0].tolist(), "exclude_item_ids": [], "k": k},
        {"history_item_ids": task.histories[-1][-5:].tolist(), "profile": [0] * profiles.shape[1],
         "exclude_item_ids": [], "k": 3},
    ]


def write_smoke(bundle_dir: str | Path, requests: list[dict[str, Any]]) -> Path:
    """smoke.json: each request with the item ids and scores the bundle itself returns (the in-process ensemble)."""
    scorer = EnsembleReference(bundle_dir)
    out = []
    for req in requests:
        ids, scores = scorer.recommend(req["history_item_ids"], req["profile"], req["exclude_item_ids"], req["k"])
        out.append({**req, "expected": {"item_ids": ids.tolist(), "scores": [float(s) for s in scores]}})
    path = Path(bundle_dir) / "smoke.json"
    path.write_text(json.dumps({"requests": out}, indent=1), encoding="utf-8")
    return path


def check_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """Raise unless the bundle holds every C5 file (and the text encoder) with consistent shapes; the manifest."""
    try:
        return read_bundle(bundle_dir, extra_files=(TEXT_ENCODER_FILE,))[0]
    except BundleError as err:
        raise CompressError(str(err)) from err


def _catalogue_texts(tables: dict[str, pd.DataFrame], item_ids: np.ndarray, recorded: dict | None) -> list[str]:
    """The model's items' texts, as the model composes them (`recorded`: its model_config's item_text)."""
    items = tables["items"].drop_duplicates("item_id").set_index("item_id")
    missing = np.setdiff1d(item_ids, items.index.to_numpy())
    if len(missing):
        raise CompressError(f"{len(missing)} model items (e.g. {missing[:5].tolist()}) are not in the items table")
    return model_item_texts(items.loc[item_ids].reset_index(), recorded)


def _model_version(model_dir: Path) -> str:
    return "m-" + hashlib.sha256((model_dir / "model.pt").read_bytes()).hexdigest()[:12]


def run_compress(config: Config, canonical_dir: str | Path, model_dir: str | Path, bundle_dir: str | Path,
                 report_dir: str | Path, work_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Build, measure and gate the variants; write the chosen serving bundle (C5) to `bundle_dir` and
    comparison.json / comparison.png / report.html to `report_dir`. Returns the comparison."""
    from components.model import TwoTowerRecommender

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):  # the exporter logs every graph pass at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    model_dir, bundle_dir, report_dir = Path(model_dir), Path(bundle_dir), Path(report_dir)
    if not model_dir.is_dir():
        raise CompressError(f"model directory {model_dir} does not exist")
    if not Path(canonical_dir).is_dir():
        raise CompressError(f"canonical tables folder {canonical_dir} does not exist")
    started = time.monotonic()
    tables = read_tables(canonical_dir)
    prepare = TwoTowerRecommender(model_dir)
    item_ids = prepare.item_ids
    texts = _catalogue_texts(tables, item_ids, prepare.cfg.get("item_text"))
    task = validation_task(config, tables)
    with tempfile.TemporaryDirectory(prefix="compress-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        variants = build_variants(config, model_dir, texts, work, progress)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(work / TOKENIZER_DIR))
        results = measure(config, variants, task, prepare, tokenizer, texts, item_ids)
        encoded_once = len(texts) > config.compress.reencode_max_items
        chosen, reason = choose_variant(results, config.compress.ndcg_tolerance,
                                        min_text_cosine=config.compress.min_text_cosine if encoded_once else None)
        log.info("gate: %s", reason)
        comparison = {
            "model_dir": str(model_dir), "model_version": _model_version(model_dir), "chosen": chosen,
            "reason": reason, "tolerance": config.compress.ndcg_tolerance, "gate_latency": config.compress.gate_latency,
            "latency_repeats": config.compress.latency_repeats, "validation_users": len(task.users),
            "catalogue_items": int(len(task.catalogue)), "variants": results,
            "catalogue_encoding": (f"once: the model's text vectors for every variant, each text encoder checked on "
                                   f"{config.compress.encoder_check_items} sampled items") if encoded_once
            else "per variant: each variant's item table from its own text encoder",
            "targets": targets_check(results, config.compress.ndcg_tolerance),
            "seconds": None,
        }
        write_bundle(variants[chosen], work / TOKENIZER_DIR, model_dir, bundle_dir, comparison,
                     smoke_requests(task, prepare, item_ids))
    comparison["seconds"] = time.monotonic() - started
    write_report(comparison, report_dir)
    log.info("serving bundle (%s) written to %s in %.0fs", chosen, bundle_dir, comparison["seconds"])
    return comparison


def popularity_prior_settings(model_dir: str | Path) -> dict[str, Any]:
    """The model's popularity priors as the bundle carries them (manifest key `popularity_prior`): the windows,
    weights, velocity weight, never-seen bonus and new-item offset of model_config.json and the ids of the items
    without a trained ID embedding (the new-item prior's)."""
    from components.model import load_model, new_item_prior_windows

    model_dir = Path(model_dir)
    model, _ = load_model(model_dir)  # one two-tower or an ensemble: its members share the training counts
    cfg = model.cfg
    item_ids = np.load(model_dir / "item_ids.npy").astype(np.int64)
    trained = model.train_count[1:].numpy() > 0
    return {"new_item_windows": new_item_prior_windows(cfg),
            "new_item_never_seen": float(cfg.get("new_item_never_seen_bonus", 0.0)),
            "new_item_velocity": float(cfg.get("new_item_velocity_weight", 0.0)),
            "new_item_offset": float(cfg.get("new_item_offset", 0.0)),
            "weight": float(cfg.get("popularity_weight", 0.0)),
            "window_days": cfg.get("popularity_window_days"),
            "new_item_ids": item_ids[~trained].tolist()}


def write_bundle(variant: Variant, tokenizer_dir: Path, model_dir: Path, bundle_dir: Path, comparison: dict,
                 requests: list[dict[str, Any]]) -> Path:
    """Contract C5 (+ the text encoder and its tokenizer) from one variant; smoke.json computed on the result."""
    from components.text_encoder import MAX_TOKENS

    cfg = json.loads((model_dir / "model_config.json").read_text(encoding="utf-8"))
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    bundle_dir.mkdir(parents=True)
    shutil.copyfile(variant.user_tower, bundle_dir / "user_tower.onnx")
    shutil.copyfile(variant.text_encoder, bundle_dir / TEXT_ENCODER_FILE)
    shutil.copytree(tokenizer_dir, bundle_dir / TOKENIZER_DIR)
    np.save(bundle_dir / "item_embeddings.npy", np.ascontiguousarray(variant.item_embeddings, dtype=np.float32))
    np.save(bundle_dir / "item_ids.npy", np.load(model_dir / "item_ids.npy").astype(np.int64))
    chosen = comparison["variants"][variant.name]
    manifest = {
        "model_version": comparison["model_version"], "variant": variant.name,
        "embedding_dim": int(variant.item_embeddings.shape[1]), "max_seq_len": int(cfg["max_seq_len"]),
        "profile_fields": list(cfg["profile_fields"]),
        "profile_encoder": json.loads((model_dir / PROFILE_ENCODER_FILE).read_text(encoding="utf-8")),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "text_encoder": {"file": TEXT_ENCODER_FILE, "tokenizer": TOKENIZER_DIR, "max_tokens": MAX_TOKENS,
                         "inputs": list(TEXT_INPUTS), "output": TEXT_OUTPUT},
        "validation": {METRIC: chosen[METRIC], "reference_" + METRIC: comparison["variants"][REFERENCE][METRIC]},
        "gate": comparison["reason"],
        PRIOR_KEY: popularity_prior_settings(model_dir),
    }
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    write_smoke(bundle_dir, requests)
    check_bundle(bundle_dir)
    return bundle_dir


@step
def compress_op(config: str, canonical: Input[Dataset], model: Input[Model], bundle: Output[Artifact],
                report: Output[HTML], metrics: Output[Metrics]):
    """KFP: build and measure the ONNX variants; `bundle` is the chosen serving bundle (contract C5)."""
    import shutil
    import tempfile
    from pathlib import Path

    from components.compress import run_compress
    from components.compress_report import kfp_metrics
    from components.config import config_from_text

    with tempfile.TemporaryDirectory(prefix="compress-report-") as tmp:
        comparison = run_compress(config_from_text(config), canonical.path, model.path, bundle.path, tmp,
                                  progress=False)
        shutil.copyfile(Path(tmp) / "report.html", report.path)
        shutil.copyfile(Path(tmp) / "comparison.json", Path(bundle.path) / "compression.json")
    for key, value in kfp_metrics(comparison).items():
        metrics.log_metric(key, value)
    bundle.metadata["variant"] = comparison["chosen"]
    bundle.metadata["model_version"] = comparison["model_version"]
