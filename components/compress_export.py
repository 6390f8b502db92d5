"""ONNX side of the compression step: the item text encoder exported to ONNX and checked against torch, int8
dynamic quantization, and text encoding with an exported encoder (the path new items take without retraining)."""

import logging
from pathlib import Path
from typing import Any

import numpy as np

from components.ensemble import onnx_session
from components.errors import RecsysError
from components.schemas import BundleError

log = logging.getLogger(__name__)

TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUT = "sentence_embedding"  # "embedding" collides with an internal name of the dynamo exporter
TOKENIZER_DIR = "tokenizer"
TEXT_ENCODER_FILE = "text_encoder.onnx"


class CompressError(RecsysError, RuntimeError):
    """A model cannot be compressed or a bundle is unusable; the message says what and where."""


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


def text_tokens(tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
    """The text encoder's inputs for `texts` (padded, truncated to the training length), int64."""
    from components.text_encoder import MAX_TOKENS

    enc = tokenizer([str(t) for t in texts], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
    return {name: np.asarray(enc[name], dtype=np.int64) for name in TEXT_INPUTS}


def encode_with(sess: Any, tokenizer: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """float32 [len(texts), dim] unit vectors from an ONNX text-encoder session."""
    out = [sess.run([TEXT_OUTPUT], text_tokens(tokenizer, texts[s : s + batch_size]))[0]
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
