"""The compression variants of a trained model (contract C4), each a user tower + item text encoder + item table:
fp32 (the reference), int8 (dynamic quantization), pruned (L1 magnitude pruning of every Linear layer) and
distilled (a shallower text encoder trained to match the teacher). A variant's item table is rebuilt through the
model's item tower from its own text encoder (above `compress.reencode_max_items`, from the model's text vectors,
encoded once) and its user tower exported over that table, so its parts agree."""

import copy
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.compress_export import (
    TEXT_ENCODER_FILE,
    TOKENIZER_DIR,
    CompressError,
    encode_with,
    export_text_encoder_onnx,
    quantize_int8,
    session,
)
from components.config import Config
from components.encoders import PROFILE_ENCODER_FILE, ProfileEncoder

log = logging.getLogger(__name__)

REFERENCE = "fp32"


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
    return model.item_embeddings(torch.from_numpy(np.asarray(text_emb, dtype=np.float32))).numpy()


@dataclass
class Variant:
    """One variant's files under `dir` (user_tower.onnx, text_encoder.onnx), its item table and its figures."""

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


def _variant_tower(model: Any, model_dir: Path, out: Path, item_embeddings: np.ndarray) -> Path:
    """A C4 copy of `model` over `item_embeddings`, exported with the model's own ONNX exporter."""
    from components.model import export_user_tower_onnx, save_artifact

    with tempfile.TemporaryDirectory(prefix="compress-model-") as tmp:
        encoder = ProfileEncoder.from_dict(json.loads((model_dir / PROFILE_ENCODER_FILE).read_text(encoding="utf-8")))
        save_artifact(model, tmp, np.load(model_dir / "item_ids.npy"), item_embeddings, encoder, [])
        return export_user_tower_onnx(tmp, out / "user_tower.onnx")


def _check_rows(n: int, cfg: Any, seed: int) -> np.ndarray | None:
    """None when every variant re-encodes the whole catalogue (n <= cfg.reencode_max_items); else the seeded sample
    of catalogue rows its text encoder is checked on."""
    if n <= cfg.reencode_max_items:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(cfg.encoder_check_items, n), replace=False))


def build_variants(config: Config, model_dir: Path, texts: list[str], work: Path,
                   progress: bool = True) -> dict[str, Variant]:
    """Export fp32 and build every configured variant under `work/<variant>/`.

    Up to `compress.reencode_max_items` items each variant's item table comes from its own text encoder over the
    whole catalogue. Above, the catalogue is encoded once: the model's own text vectors (the per-text cache
    training filled; only what is missing is encoded) feed every variant's item tower, and each variant's text
    encoder, which embeds the items onboarded later, is compared with them on a seeded sample."""
    import torch

    from components.model import export_user_tower_onnx, load_model
    from components.text_encoder import (
        cached_text_embeddings,
        encoder_workers,
        is_static,
        load_text_encoder,
        recorded_encoder_source,
    )

    cfg = config.compress
    torch.set_num_threads(config.train.num_threads)
    model, _ = load_model(model_dir)
    encoder_dir = recorded_encoder_source(model.cfg.get("encoder_dir"), model_dir)
    teacher = load_text_encoder(encoder_dir).eval()
    layered = not is_static(encoder_dir)  # a transformer (prune its Linear weights, distil it); else a token table
    base_emb = np.load(model_dir / "item_embeddings.npy").astype(np.float32)
    check = _check_rows(len(texts), cfg, config.train.seed)
    check_texts = texts if check is None else [texts[i] for i in check]
    out: dict[str, Variant] = {}

    fp32 = Variant(REFERENCE, work / REFERENCE, base_emb)
    export_user_tower_onnx(model_dir, fp32.user_tower)
    export_text_encoder_onnx(teacher, fp32.text_encoder)
    exported_text = encode_with(session(fp32.text_encoder), teacher.tokenizer, check_texts)
    if check is None:
        catalogue_text = reference_text = exported_text
        fp32.info = {}
    else:
        log.info("%d items > compress.reencode_max_items: the catalogue's text vectors are the model's (encoded once, "
                 "cached); each variant's text encoder is checked on %d sampled items", len(texts), len(check))
        catalogue_text = cached_text_embeddings(texts, encoder_dir, Path(config.paths.data_dir) / "cache", progress,
                                                encoder=teacher, workers=encoder_workers(config.model.encoder_workers))
        reference_text = catalogue_text[check]
        fp32.info = {"encoder_check_items": int(len(check)),
                     "text_export_max_abs_diff": float(np.abs(exported_text - reference_text).max())}
    rebuilt = item_embeddings_from_text(model, catalogue_text)
    fp32.info["text_path_max_abs_diff"] = float(np.abs(rebuilt - base_emb).max())
    if fp32.info["text_path_max_abs_diff"] > 1e-3:
        log.warning("the model's item embeddings differ from its item tower over the fp32 text encoder by %.2e: "
                    "the model was trained on other text embeddings", fp32.info["text_path_max_abs_diff"])
    out[REFERENCE] = fp32

    def finish(name: str, net: Any, info: dict) -> Variant:
        """Item table through `net` (from work/<name>/text_encoder.onnx over the catalogue, or over the model's
        text vectors above reencode_max_items), then the user tower over it; the encoder's cosine to fp32's."""
        text = encode_with(session(work / name / "text_encoder.onnx"), teacher.tokenizer, check_texts)
        if check is None:
            emb = item_embeddings_from_text(net, text)
        else:  # the model's text vectors: the model's own net gives the table already rebuilt above
            emb = rebuilt if net is model else item_embeddings_from_text(net, catalogue_text)
        info = {**info, "text_cosine_mean": float((text * reference_text).sum(-1).mean()),
                "text_cosine_min": float((text * reference_text).sum(-1).min())}
        variant = Variant(name, work / name, emb, info)
        _variant_tower(net, model_dir, variant.dir, emb)
        return variant

    if "int8" in cfg.variants:
        log.info("int8: dynamic per-channel quantization of both networks")
        quantize_int8(fp32.text_encoder, work / "int8" / "text_encoder.onnx")
        v = finish("int8", model, {})
        # attribution: fp32 tower over the int8-text item table (text only); int8 fp32-table tower (tower only)
        parts = v.dir / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        text_only = parts / "user_tower_text_only.onnx"
        v.user_tower.rename(text_only)
        quantize_int8(text_only, v.user_tower)
        if check is not None:  # the table is the model's text vectors: the text part is judged by the sample's cosine
            text_only.unlink()
        quantize_int8(fp32.user_tower, parts / "user_tower_only.onnx")
        out["int8"] = v
    if "pruned" in cfg.variants:
        log.info("pruned: L1 unstructured pruning of %.0f%% of every Linear weight", 100 * cfg.prune_amount)
        net = copy.deepcopy(model)
        tower_stats = prune_linear(net, cfg.prune_amount)
        student = clone_encoder(teacher)
        if layered:
            text_stats = prune_linear(student.transformer, cfg.prune_amount)
        else:  # a token table has no Linear weight: the variant prunes the towers only
            text_stats = {"sparsity": 0.0}
        export_text_encoder_onnx(student, work / "pruned" / "text_encoder.onnx")
        out["pruned"] = finish("pruned", net, {"two_tower_sparsity": tower_stats["sparsity"],
                                                     "text_encoder_sparsity": text_stats["sparsity"]})
    if "distilled" in cfg.variants and not layered:
        log.info("distilled: skipped, the text encoder (%s) is a token table with no layers to drop", encoder_dir)
    elif "distilled" in cfg.variants:
        log.info("distilled: %d-layer student of the text encoder, %d epochs on %d texts", cfg.distill_layers,
                 cfg.distill_epochs, len(check_texts))
        student, info = distill_text_encoder(teacher, check_texts, reference_text, cfg.distill_layers,
                                             cfg.distill_epochs, cfg.distill_batch_size, cfg.distill_learning_rate,
                                             config.train.seed, progress)
        export_text_encoder_onnx(student, work / "distilled" / "text_encoder.onnx")
        out["distilled"] = finish("distilled", model, info)
    teacher.tokenizer.save_pretrained(str(work / TOKENIZER_DIR))
    return out
