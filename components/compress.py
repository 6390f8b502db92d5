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
"""

import base64
import copy
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.config import Config
from components.encoders import PROFILE_ENCODER_FILE, ProfileEncoder
from components.ensemble import EnsembleReference, onnx_session
from components.errors import RecsysError
from components.evaluate import eval_data, evaluate_main  # imported up front: it reads the config defaults at import
from components.evaluation_types import EvalData, ModelResult
from components.kfp_support import step
from components.metrics import paired_difference
from components.recommender import TowerRecommender
from components.schemas import BundleError, read_bundle, read_tables
from components.splits import configured_split

log = logging.getLogger(__name__)

REFERENCE = "fp32"
METRIC = "ndcg@10"
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUT = "sentence_embedding"  # "embedding" collides with an internal name of the dynamo exporter
TOKENIZER_DIR = "tokenizer"
TEXT_ENCODER_FILE = "text_encoder.onnx"
LATENCY_BATCHES = (1, 32)
SIZE_TARGET, LATENCY_TARGET = 0.35, 0.7  # int8 file <= 35% of fp32; int8/fp32 latency at batch 32 <= 0.7


class CompressError(RecsysError, RuntimeError):
    """A model cannot be compressed or a bundle is unusable; the message says what and where."""


# ----------------------------------------------------------------------------------------------- ONNX helpers


def session(path: str | Path):
    """An ONNX Runtime CPU session with one intra-op thread (fair, reproducible timings)."""
    try:
        return onnx_session(path)
    except BundleError as err:
        raise CompressError(str(err)) from err


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """ONNX Runtime dynamic quantization: int8 weights, one scale per output channel (activations at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # it logs every tensor it skips, and advises a pre-processing we skip on purpose
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.disable(previous)
    return dst


def export_text_encoder_onnx(encoder: Any, out_path: str | Path, atol: float = 1e-4) -> Path:
    """Export a `SentenceEncoder` (transformer + mean pooling + L2 norm) to one ONNX file and check it on ORT.

    Inputs `input_ids`, `attention_mask` INT64 [B, T]; output `sentence_embedding` FP32 [B, dim].
    """
    import torch

    from components.model import quiet_onnx_export

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    encoder = encoder.eval()
    tokens = encoder.tokenize(["A short item text.", "Another, longer item text: several fields, in the order the "
                               "declared template gives them.", "Third"])
    example = (tokens["input_ids"], tokens["attention_mask"])
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("seq", min=2, max=512)
    with torch.no_grad(), quiet_onnx_export():
        torch.onnx.export(encoder, example, str(out_path), input_names=list(TEXT_INPUTS), output_names=[TEXT_OUTPUT],
                          dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                          external_data=False, verbose=False)
        expected = encoder(*example).numpy()
    got = session(out_path).run([TEXT_OUTPUT], {k: v.numpy() for k, v in zip(TEXT_INPUTS, example, strict=True)})[0]
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        raise CompressError(f"ONNX text encoder {out_path} differs from torch by {diff:.2e} (> {atol})")
    log.info("text encoder exported to %s (max |onnx - torch| = %.2e)", out_path, diff)
    return out_path


def _tokens(tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
    from components.text_encoder import MAX_TOKENS

    enc = tokenizer([str(t) for t in texts], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
    return {name: np.asarray(enc[name], dtype=np.int64) for name in TEXT_INPUTS}


def encode_with(sess: Any, tokenizer: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """float32 [len(texts), dim] unit vectors from an ONNX text-encoder session."""
    out = [sess.run([TEXT_OUTPUT], _tokens(tokenizer, texts[s : s + batch_size]))[0]
           for s in range(0, len(texts), batch_size)]
    dim = int(sess.get_outputs()[0].shape[-1])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)


def encode_texts_onnx(bundle_dir: str | Path, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Encode item texts with a bundle's `text_encoder.onnx` (same tokenizer and pooling as training): the input
    the model's item tower needs to embed new items without retraining."""
    from transformers import AutoTokenizer

    bundle = Path(bundle_dir)
    model, tok_dir = bundle / TEXT_ENCODER_FILE, bundle / TOKENIZER_DIR
    if not model.is_file() or not tok_dir.is_dir():
        raise CompressError(f"bundle {bundle} lacks text_encoder.onnx or {TOKENIZER_DIR}/")
    return encode_with(session(model), AutoTokenizer.from_pretrained(str(tok_dir)), list(texts), batch_size)


# ----------------------------------------------------------------------------------------------- compression


def prune_linear(module: Any, amount: float) -> dict[str, float]:
    """L1 unstructured pruning of every nn.Linear weight in `module`, made permanent; returns the sparsity."""
    import torch
    from torch.nn.utils import prune

    zeros = total = 0
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            if amount > 0:
                prune.l1_unstructured(layer, "weight", amount=amount)
                prune.remove(layer, "weight")
            zeros += int((layer.weight == 0).sum())
            total += layer.weight.numel()
    if total == 0:
        raise CompressError(f"{type(module).__name__} has no Linear layer to prune")
    return {"linear_weights": total, "sparsity": zeros / total}


def clone_encoder(encoder: Any) -> Any:
    """A deep copy of a `SentenceEncoder`'s network sharing its (read-only) tokenizer."""
    tokenizer = encoder.tokenizer
    encoder.tokenizer = None
    try:
        twin = copy.deepcopy(encoder)
    finally:
        encoder.tokenizer = tokenizer
    twin.tokenizer = tokenizer
    return twin


def make_student(teacher: Any, layers: int) -> Any:
    """A copy of the teacher keeping its embeddings and its first `layers` transformer layers."""
    import torch

    student = clone_encoder(teacher)
    blocks = student.transformer.encoder.layer
    if layers > len(blocks):
        raise CompressError(f"compress.distill_layers={layers} but the teacher has only {len(blocks)} layers")
    student.transformer.encoder.layer = torch.nn.ModuleList(list(blocks)[:layers])
    student.transformer.config.num_hidden_layers = layers
    return student


def distill_text_encoder(teacher: Any, texts: list[str], targets: np.ndarray, layers: int, epochs: int,
                         batch_size: int, learning_rate: float, seed: int, progress: bool = True) -> tuple[Any, dict]:
    """Train a shallower student to reproduce the teacher's embeddings (`targets`) of `texts` (loss 1 - cosine).

    The token embeddings stay frozen (the teacher's, so words absent from the catalogue keep their meaning, and
    each step is about twice as fast). Every 10th text is held out: its cosine estimates the quality on texts
    the student never saw (new items).
    """
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    student = make_student(teacher, layers)
    for param in student.transformer.embeddings.parameters():
        param.requires_grad_(False)
    target = torch.from_numpy(np.asarray(targets, dtype=np.float32))
    held = np.arange(len(texts)) % 10 == 9 if len(texts) >= 10 else np.zeros(len(texts), dtype=bool)
    train_idx = np.flatnonzero(~held)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=learning_rate)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(1, epochs + 1):
        student.train()
        losses = []
        order = rng.permutation(train_idx)
        for s in tqdm(range(0, len(order), batch_size), desc=f"distil epoch {epoch}", disable=not progress,
                      leave=False):
            idx = order[s : s + batch_size]
            tok = student.tokenize([texts[i] for i in idx])
            pred = student(tok["input_ids"], tok["attention_mask"])
            loss = (1 - (pred * target[idx]).sum(-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else 0.0})
        log.info("distillation epoch %d: 1 - cos = %.5f", epoch, history[-1]["loss"])
    student.eval()
    info = {"layers": layers, "epochs": epochs, "history": history, "held_out_texts": int(held.sum())}
    if held.any():
        got = student.encode([texts[i] for i in np.flatnonzero(held)])
        info["held_out_cosine"] = float((got * targets[held]).sum(-1).mean())
    return student, info


def item_embeddings_from_text(model: Any, text_emb: np.ndarray) -> np.ndarray:
    """The model's item tower over new text embeddings (catalogue order): float32 [N, D]."""
    import torch

    model.eval()
    with torch.no_grad():
        return model.item_table(text=torch.from_numpy(np.asarray(text_emb, dtype=np.float32)))[1:].numpy()


# ----------------------------------------------------------------------------------------------- measurement


class OnnxRecommender(TowerRecommender):
    """Contract C3 over an ONNX user tower and an item table; inputs prepared exactly like `prepare`'s (the trained
    model's tower inputs: its item ids and profile encoder)."""

    def __init__(self, name: str, tower: str | Path, item_ids: np.ndarray, item_embeddings: np.ndarray,
                 prepare: TowerRecommender, batch_size: int = 256) -> None:
        self.session = session(tower)
        super().__init__(name, self._encode, item_ids, item_embeddings, prepare.profile_encoder,
                         prepare.max_seq_len, batch_size)

    def _encode(self, history: np.ndarray, profile: np.ndarray) -> np.ndarray:
        return self.session.run(["user_embedding"], {"history": history, "profile": profile})[0]


def validation_task(config: Config, tables: dict[str, pd.DataFrame]) -> EvalData:
    """The validation stage of the split of contract C2 (same seed and cold items as training and evaluation)."""
    split = configured_split(tables["interactions"], config)
    if split.validation.empty:
        raise CompressError("the split has no validation rows: every user has fewer than 3 interactions")
    return eval_data(split, tables["items"], tables["users"], "validation")


def validation_ndcg(recommender: Any, task: EvalData, config: Config) -> ModelResult:
    """NDCG@10 (with bootstrap interval and per-user values) through the evaluator's ranking."""
    ks = sorted(set(config.evaluate.ks) | {10})
    return evaluate_main(recommender, recommender.name, "candidate", task, config, groups=False, ks=ks)


def measure_latency(cases: dict[str, tuple[str | Path, dict[str, dict[str, np.ndarray]]]], repeats: int,
                    warmup: int = 3) -> dict[str, dict[int, float]]:
    """Median milliseconds per (case, batch size), all in this process: runs are interleaved round-robin across
    cases so that background load hits every variant alike. `cases`: name -> (onnx path, {batch: feeds})."""
    sessions = {name: session(path) for name, (path, _) in cases.items()}
    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in feeds} for name, (_, feeds) in cases.items()}
    for r in range(warmup + repeats):
        for name, (_, feeds) in cases.items():
            for b, feed in feeds.items():
                start = time.perf_counter()
                sessions[name].run(None, feed)
                if r >= warmup:
                    times[name][b].append(1000 * (time.perf_counter() - start))
    return {name: {b: float(np.median(v)) for b, v in per.items()} for name, per in times.items()}


def choose_variant(measurements: dict[str, dict[str, float]], tolerance: float, latency_key: str = "gate_latency_ms",
                   metric: str = METRIC, reference: str = REFERENCE) -> tuple[str, str]:
    """The gate: the fastest variant whose `metric` is within `tolerance` (relative) of the reference, else the
    reference. Returns (variant, reason)."""
    if reference not in measurements:
        raise CompressError(f"the gate needs the {reference!r} reference variant; got {sorted(measurements)}")
    ref = float(measurements[reference][metric])
    floor = ref * (1 - tolerance)
    passing = {name: m for name, m in measurements.items() if float(m[metric]) >= floor}
    best = min(passing, key=lambda name: (float(passing[name][latency_key]), name != reference))
    dropped = sorted(set(measurements) - set(passing))
    rule = f"{metric} >= {floor:.4f} ({reference} {ref:.4f} - {tolerance:.1%})"
    if best == reference:
        reason = f"{reference} kept: no variant with {rule} is faster by {latency_key}"
    else:
        reason = (f"{best}: fastest by {latency_key} ({float(measurements[best][latency_key]):.2f} ms vs {reference} "
                  f"{float(measurements[reference][latency_key]):.2f} ms) among variants with {rule}")
    if dropped:
        reason += "; out of tolerance: " + ", ".join(f"{n} ({float(measurements[n][metric]):.4f})" for n in dropped)
    return best, reason


# ----------------------------------------------------------------------------------------------- the bundle


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


# ----------------------------------------------------------------------------------------------- the step


@dataclass
class Variant:
    name: str
    dir: Path
    item_embeddings: np.ndarray = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def user_tower(self) -> Path:
        return self.dir / "user_tower.onnx"

    @property
    def text_encoder(self) -> Path:
        return self.dir / TEXT_ENCODER_FILE


def _encoder_dir(model_dir: Path, cfg: dict) -> str | None:
    enc = cfg.get("encoder_dir")
    if enc and not Path(enc).is_absolute():
        enc = str(model_dir / enc)
    return enc


def _catalogue_texts(tables: dict[str, pd.DataFrame], item_ids: np.ndarray) -> list[str]:
    items = tables["items"].drop_duplicates("item_id").set_index("item_id")
    missing = np.setdiff1d(item_ids, items.index.to_numpy())
    if len(missing):
        raise CompressError(f"{len(missing)} model items (e.g. {missing[:5].tolist()}) are not in the items table")
    return items.loc[item_ids, "text"].fillna("").astype(str).tolist()


def _model_version(model_dir: Path) -> str:
    return "m-" + hashlib.sha256((model_dir / "model.pt").read_bytes()).hexdigest()[:12]


def _variant_tower(model: Any, model_dir: Path, out: Path, item_embeddings: np.ndarray) -> Path:
    """A C4 copy of `model` over `item_embeddings`, exported with the model's own ONNX exporter."""
    from components.model import export_user_tower_onnx, save_artifact

    with tempfile.TemporaryDirectory(prefix="compress-model-") as tmp:
        encoder = ProfileEncoder.from_dict(json.loads((model_dir / PROFILE_ENCODER_FILE).read_text(encoding="utf-8")))
        save_artifact(model, tmp, np.load(model_dir / "item_ids.npy"), item_embeddings, encoder, [])
        return export_user_tower_onnx(tmp, out / "user_tower.onnx")


def build_variants(config: Config, model_dir: Path, texts: list[str], work: Path,
                   progress: bool = True) -> dict[str, Variant]:
    """Export fp32 and build every configured variant under `work/<variant>/`."""
    import torch

    from components.model import export_user_tower_onnx, load_model
    from components.text_encoder import SentenceEncoder

    cfg = config.compress
    torch.set_num_threads(config.train.num_threads)
    model, _ = load_model(model_dir)
    teacher = SentenceEncoder(_encoder_dir(model_dir, model.cfg)).eval()
    base_emb = np.load(model_dir / "item_embeddings.npy").astype(np.float32)
    out: dict[str, Variant] = {}

    fp32 = Variant(REFERENCE, work / REFERENCE, base_emb)
    export_user_tower_onnx(model_dir, fp32.user_tower)
    export_text_encoder_onnx(teacher, fp32.text_encoder)
    teacher_text = encode_with(session(fp32.text_encoder), teacher.tokenizer, texts)
    rebuilt = item_embeddings_from_text(model, teacher_text)
    fp32.info = {"text_path_max_abs_diff": float(np.abs(rebuilt - base_emb).max())}
    if fp32.info["text_path_max_abs_diff"] > 1e-3:
        log.warning("the model's item embeddings differ from its item tower over the fp32 text encoder by %.2e: "
                    "the model was trained on other text embeddings", fp32.info["text_path_max_abs_diff"])
    out[REFERENCE] = fp32

    def finish(name: str, net: Any, info: dict) -> Variant:
        """Item table through `net` from work/<name>/text_encoder.onnx, then the user tower over it."""
        text = encode_with(session(work / name / "text_encoder.onnx"), teacher.tokenizer, texts)
        emb = item_embeddings_from_text(net, text)
        info = {**info, "text_cosine_mean": float((text * teacher_text).sum(-1).mean()),
                "text_cosine_min": float((text * teacher_text).sum(-1).min())}
        variant = Variant(name, work / name, emb, info)
        _variant_tower(net, model_dir, variant.dir, emb)
        return variant

    if "int8" in cfg.variants:
        log.info("int8: dynamic per-channel quantization of both networks")
        quantize_int8(fp32.text_encoder, work / "int8" / "text_encoder.onnx")
        v = finish("int8", model, {})
        # attribution: fp32 tower over the int8-text item table (text only); int8 fp32-table tower (tower only)
        text_only = v.dir / "parts" / "user_tower_text_only.onnx"
        text_only.parent.mkdir(parents=True, exist_ok=True)
        v.user_tower.rename(text_only)
        quantize_int8(text_only, v.user_tower)
        quantize_int8(fp32.user_tower, v.dir / "parts" / "user_tower_only.onnx")
        out["int8"] = v
    if "pruned" in cfg.variants:
        log.info("pruned: L1 unstructured pruning of %.0f%% of every Linear weight", 100 * cfg.prune_amount)
        net = copy.deepcopy(model)
        tower_stats = prune_linear(net, cfg.prune_amount)
        student = clone_encoder(teacher)
        text_stats = prune_linear(student.transformer, cfg.prune_amount)
        export_text_encoder_onnx(student, work / "pruned" / "text_encoder.onnx")
        out["pruned"] = finish("pruned", net, {"two_tower_sparsity": tower_stats["sparsity"],
                                                     "text_encoder_sparsity": text_stats["sparsity"]})
    if "distilled" in cfg.variants:
        log.info("distilled: %d-layer student of the text encoder, %d epochs", cfg.distill_layers, cfg.distill_epochs)
        student, info = distill_text_encoder(teacher, texts, teacher_text, cfg.distill_layers, cfg.distill_epochs,
                                             cfg.distill_batch_size, cfg.distill_learning_rate, config.train.seed,
                                             progress)
        export_text_encoder_onnx(student, work / "distilled" / "text_encoder.onnx")
        out["distilled"] = finish("distilled", model, info)
    teacher.tokenizer.save_pretrained(str(work / TOKENIZER_DIR))
    return out


def _latency_cases(variants: dict[str, Variant], task: EvalData, prepare: Any, tokenizer: Any,
                   texts: list[str]) -> dict[str, tuple[Path, dict]]:
    hist, prof = prepare.tower_inputs(task.users, task.histories)
    order = np.argsort([-len(h) for h in task.histories], kind="stable")  # real users, full histories first
    tower_feeds = {b: {"history": hist[order[:b]], "profile": prof[order[:b]]} for b in LATENCY_BATCHES}
    text_feeds = {b: _tokens(tokenizer, texts[:b]) for b in LATENCY_BATCHES}
    cases = {}
    for name, v in variants.items():
        cases[f"{name}/user_tower"] = (v.user_tower, tower_feeds)
        cases[f"{name}/text_encoder"] = (v.text_encoder, text_feeds)
    return cases


def measure(config: Config, variants: dict[str, Variant], task: EvalData, prepare: Any, tokenizer: Any,
            texts: list[str], item_ids: np.ndarray) -> dict[str, dict[str, Any]]:
    """Sizes, latencies (batch 1 and 32) and validation NDCG@10 of every variant, plus the int8 attribution."""
    lat = measure_latency(_latency_cases(variants, task, prepare, tokenizer, texts), config.compress.latency_repeats)
    results, per_user = {}, {}
    for name, v in variants.items():
        res = validation_ndcg(OnnxRecommender(name, v.user_tower, item_ids, v.item_embeddings, prepare), task, config)
        per_user[name] = res.per_user[METRIC]
        m = {
            METRIC: res.summary[METRIC].value, f"{METRIC}_low": res.summary[METRIC].low,
            f"{METRIC}_high": res.summary[METRIC].high, "hr@10": res.summary["hr@10"].value,
            "user_tower_bytes": v.user_tower.stat().st_size, "text_encoder_bytes": v.text_encoder.stat().st_size,
            **{f"user_tower_b{b}_ms": lat[f"{name}/user_tower"][b] for b in LATENCY_BATCHES},
            **{f"text_encoder_b{b}_ms": lat[f"{name}/text_encoder"][b] for b in LATENCY_BATCHES},
        }
        m["latency_b32_ms"] = m["user_tower_b32_ms"] + m["text_encoder_b32_ms"]
        m["gate_latency_ms"] = {"bundle": m["latency_b32_ms"], "user_tower": m["user_tower_b32_ms"],
                                "text_encoder": m["text_encoder_b32_ms"]}[config.compress.gate_latency]
        for key, value in v.info.items():
            if isinstance(value, int | float):
                m[key] = value
        if "held_out_cosine" in v.info:
            m["distill_history"] = v.info["history"]
        results[name] = m
    for name in variants:
        if name != REFERENCE:
            d = paired_difference(per_user[name], per_user[REFERENCE], config.evaluate.bootstrap_samples,
                                  config.train.seed)
            results[name][f"{METRIC}_diff_low"], results[name][f"{METRIC}_diff_high"] = d.low, d.high
    if "int8" in variants:
        v, fp32 = variants["int8"], variants[REFERENCE]
        tower = OnnxRecommender("int8-tower", v.dir / "parts" / "user_tower_only.onnx", item_ids, fp32.item_embeddings,
                                prepare)
        text = OnnxRecommender("int8-text", v.dir / "parts" / "user_tower_text_only.onnx", item_ids,
                               v.item_embeddings, prepare)
        results["int8"][f"{METRIC}_tower_only"] = validation_ndcg(tower, task, config).summary[METRIC].value
        results["int8"][f"{METRIC}_text_only"] = validation_ndcg(text, task, config).summary[METRIC].value
    return results


def targets_check(results: dict[str, dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The int8 targets per network: file <= 35% of fp32, batch-32 latency ratio <= 0.7, NDCG@10 within tolerance."""
    if "int8" not in results:
        return {}
    q, f = results["int8"], results[REFERENCE]
    ref = f[METRIC]
    out = {}
    for part, ndcg in (("user_tower", q[f"{METRIC}_tower_only"]), ("text_encoder", q[f"{METRIC}_text_only"])):
        size = q[f"{part}_bytes"] / f[f"{part}_bytes"]
        speed = q[f"{part}_b32_ms"] / f[f"{part}_b32_ms"]
        drop = (ref - ndcg) / ref if ref else 0.0
        out[part] = {"size_ratio": size, "size_ok": size <= SIZE_TARGET, "latency_ratio_b32": speed,
                     "latency_ok": speed <= LATENCY_TARGET, "ndcg_relative_drop": drop, "ndcg_ok": drop <= tolerance}
    drop = (ref - q[METRIC]) / ref if ref else 0.0
    out["int8_bundle"] = {"ndcg_relative_drop": drop, "ndcg_ok": drop <= tolerance}
    return out


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
    texts = _catalogue_texts(tables, item_ids)
    task = validation_task(config, tables)
    with tempfile.TemporaryDirectory(prefix="compress-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        variants = build_variants(config, model_dir, texts, work, progress)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(work / TOKENIZER_DIR))
        results = measure(config, variants, task, prepare, tokenizer, texts, item_ids)
        chosen, reason = choose_variant(results, config.compress.ndcg_tolerance)
        log.info("gate: %s", reason)
        comparison = {
            "model_dir": str(model_dir), "model_version": _model_version(model_dir), "chosen": chosen,
            "reason": reason, "tolerance": config.compress.ndcg_tolerance, "gate_latency": config.compress.gate_latency,
            "latency_repeats": config.compress.latency_repeats, "validation_users": len(task.users),
            "catalogue_items": int(len(task.catalogue)), "variants": results,
            "targets": targets_check(results, config.compress.ndcg_tolerance),
            "seconds": None,
        }
        write_bundle(variants[chosen], work / TOKENIZER_DIR, model_dir, bundle_dir, comparison,
                     smoke_requests(task, prepare, item_ids))
    comparison["seconds"] = time.monotonic() - started
    write_report(comparison, report_dir)
    log.info("serving bundle (%s) written to %s in %.0fs", chosen, bundle_dir, comparison["seconds"])
    return comparison


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
    }
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    write_smoke(bundle_dir, requests)
    check_bundle(bundle_dir)
    return bundle_dir


# ----------------------------------------------------------------------------------------------- report


def _chart(comparison: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = comparison["variants"]
    names = list(res)
    colors = ["tab:green" if n == comparison["chosen"] else "tab:gray" for n in names]
    panels = [("user tower size (MB)", "user_tower_bytes", 1e-6),
              ("text encoder size (MB)", "text_encoder_bytes", 1e-6),
              ("user tower, batch 32 (ms)", "user_tower_b32_ms", 1),
              ("text encoder, batch 32 (ms)", "text_encoder_b32_ms", 1),
              ("validation NDCG@10", METRIC, 1)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (title, key, scale) in zip(axes, panels, strict=True):
        values = [res[n][key] * scale for n in names]
        ax.bar(names, values, color=colors)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=30)
        for i, value in enumerate(values):
            ax.annotate(f"{value:.3g}", (i, value), ha="center", va="bottom", fontsize=8)
    if METRIC in [p[1] for p in panels]:
        ref = res[REFERENCE][METRIC]
        axes[-1].axhline(ref * (1 - comparison["tolerance"]), color="tab:red", linestyle="--", linewidth=1)
        axes[-1].set_ylim(min(res[n][METRIC] for n in names) * 0.9, max(res[n][METRIC] for n in names) * 1.05)
    fig.suptitle(f"compression variants (chosen: {comparison['chosen']}; red line = NDCG tolerance)", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_report(comparison: dict, report_dir: str | Path) -> Path:
    """comparison.json, comparison.png and report.html (table + embedded chart) in `report_dir`."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2, default=float), encoding="utf-8")
    png = _chart(comparison)
    (out / "comparison.png").write_bytes(png)
    res, ref = comparison["variants"], comparison["variants"][REFERENCE]
    rows = []
    for name, m in res.items():
        rel = (m[METRIC] - ref[METRIC]) / ref[METRIC] if ref[METRIC] else 0.0
        cos = f"{m['text_cosine_mean']:.4f} / {m['text_cosine_min']:.4f}" if "text_cosine_mean" in m else "1 / 1"
        rows.append(
            f"<tr{' style=background:#dfd' if name == comparison['chosen'] else ''}><td>{name}</td>"
            f"<td>{m['user_tower_bytes'] / 1e6:.3f}</td><td>{m['text_encoder_bytes'] / 1e6:.1f}</td>"
            f"<td>{m['user_tower_b1_ms']:.2f}</td><td>{m['user_tower_b32_ms']:.2f}</td>"
            f"<td>{m['text_encoder_b1_ms']:.2f}</td><td>{m['text_encoder_b32_ms']:.1f}</td>"
            f"<td>{m[METRIC]:.4f} [{m[f'{METRIC}_low']:.4f}, {m[f'{METRIC}_high']:.4f}]</td><td>{rel:+.2%}</td>"
            f"<td>{cos}</td></tr>")
    targets = "".join(
        f"<tr><td>{part}</td>" + "".join(
            f"<td>{t.get(k, float('nan')):.3f} {'✔' if t.get(ok) else '✘'}</td>" if k in t else "<td>-</td>"
            for k, ok in (("size_ratio", "size_ok"), ("latency_ratio_b32", "latency_ok"),
                          ("ndcg_relative_drop", "ndcg_ok"))) + "</tr>"
        for part, t in comparison["targets"].items())
    html = f"""<html><head><meta charset="utf-8"><title>Compression report</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
table{{border-collapse:collapse}}</style></head><body>
<h2>Compression of model {comparison['model_version']}</h2>
<p><b>Chosen: {comparison['chosen']}</b> &mdash; {comparison['reason']}</p>
<table><tr><th>variant</th><th>user tower MB</th><th>text encoder MB</th><th>tower b1 ms</th><th>tower b32 ms</th>
<th>text b1 ms</th><th>text b32 ms</th><th>val NDCG@10 [95% CI]</th><th>vs fp32</th>
<th>text cos vs teacher mean / min</th></tr>{''.join(rows)}</table>
<p>Latency: ONNX Runtime, 1 intra-op thread, median of {comparison['latency_repeats']} interleaved runs in one process;
batch 32 = 32 validation users (user tower) or 32 catalogue texts (text encoder). NDCG@10 on
{comparison['validation_users']} validation users against {comparison['catalogue_items']} warm items (seen items
excluded). Pruned weights are stored densely: unstructured zeros neither shrink the file nor speed up dense
kernels.</p>
<h3>int8 targets (size &le; {SIZE_TARGET:.0%}, latency ratio &le; {LATENCY_TARGET}, NDCG drop &le;
{comparison['tolerance']:.0%})</h3>
<table><tr><th>part</th><th>size ratio</th><th>latency ratio b32</th><th>NDCG@10 relative drop</th></tr>
{targets}</table>
<p>NDCG per part: user_tower = the int8 tower scored against the fp32 item table; text_encoder = the item table
re-embedded from the int8 encoder's text vectors (fp32 tower); int8_bundle = both. A variant's item table is
always rebuilt through the model's item tower from that variant's text encoder, so catalogue items and items
onboarded later (encode_texts_onnx) share one space.</p>
<img src="data:image/png;base64,{base64.b64encode(png).decode()}"/>
</body></html>"""
    (out / "report.html").write_text(html, encoding="utf-8")
    return out / "report.html"


def kfp_metrics(comparison: dict) -> dict[str, float]:
    """Flat numbers for a KFP Metrics artifact (variant-prefixed)."""
    out = {"chosen_is_" + comparison["chosen"]: 1.0}
    for name, m in comparison["variants"].items():
        for key in (METRIC, "user_tower_bytes", "text_encoder_bytes", "user_tower_b32_ms", "text_encoder_b32_ms"):
            out[f"{name}_{key}"] = float(m[key])
    return out


@step
def compress_op(config: str, canonical: Input[Dataset], model: Input[Model], bundle: Output[Artifact],
                report: Output[HTML], metrics: Output[Metrics]):
    """KFP: build and measure the ONNX variants; `bundle` is the chosen serving bundle (contract C5)."""
    import shutil
    import tempfile
    from pathlib import Path

    from components.compress import kfp_metrics, run_compress
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
