"""ONNX side of the compression step: the item text encoder exported to ONNX and checked against torch, int8
dynamic quantization, and text encoding with an exported encoder (the path new items take without retraining)."""

import logging
from pathlib import Path

import numpy as np

from components.ensemble import onnx_session
from components.errors import RecsysError
from components.schemas import BundleError
from components.text_encoder import (  # noqa: F401 - the text encoder's ONNX side, used by the compression modules
    TEXT_INPUTS,
    TEXT_OUTPUT,
    encode_with,
    export_text_encoder_onnx,
    text_tokens,
)

log = logging.getLogger(__name__)

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


def encode_texts_onnx(bundle_dir: str | Path, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Encode item texts with a bundle's `text_encoder.onnx` (same tokenizer and pooling as training): the input
    the model's item tower needs to embed new items without retraining."""
    from transformers import AutoTokenizer

    bundle = Path(bundle_dir)
    model, tok_dir = bundle / TEXT_ENCODER_FILE, bundle / TOKENIZER_DIR
    if not model.is_file() or not tok_dir.is_dir():
        raise CompressError(f"bundle {bundle} lacks text_encoder.onnx or {TOKENIZER_DIR}/")
    return encode_with(session(model), AutoTokenizer.from_pretrained(str(tok_dir)), list(texts), batch_size)
