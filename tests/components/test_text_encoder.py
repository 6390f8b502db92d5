"""The per-text embedding cache (a retrain encodes only new or changed item texts, with the encoder's own output),
LoRA on the encoder's top layers, and the static token-table encoder."""

from pathlib import Path

import numpy as np
import pytest

from components.text_encoder import SentenceEncoder, cached_text_embeddings, store_text_embeddings


class CountingEncoder:
    """The real encoder, counting the texts it is asked to encode."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        self.encoder, self.texts = encoder, []

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.texts += list(texts)
        return self.encoder.encode(texts, batch_size=batch_size, progress=progress)


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder(None)


TEXTS = ["a red wool scarf", "Toy Story (1995) | Animation", "a red wool scarf", "kitchen knife, 20 cm", ""]


def test_second_call_encodes_only_the_changed_text(encoder: SentenceEncoder, tmp_path: Path) -> None:
    uncached = cached_text_embeddings(TEXTS, None, None, progress=False, encoder=encoder)
    counting = CountingEncoder(encoder)
    first = cached_text_embeddings(TEXTS, None, tmp_path, progress=False, encoder=counting)
    assert sorted(counting.texts) == sorted(set(TEXTS))  # each distinct text once, in batches
    np.testing.assert_allclose(first, uncached, atol=1e-5)

    counting.texts = []
    again = cached_text_embeddings(TEXTS, None, tmp_path, progress=False, encoder=counting)
    assert counting.texts == []
    np.testing.assert_array_equal(again, first)

    changed = [*TEXTS[:3], "kitchen knife, 25 cm", TEXTS[4]]  # one item's text edited
    counting.texts = []
    second = cached_text_embeddings(changed, None, tmp_path, progress=False, encoder=counting)
    assert counting.texts == ["kitchen knife, 25 cm"]
    np.testing.assert_array_equal(second[[0, 1, 2, 4]], first[[0, 1, 2, 4]])
    np.testing.assert_allclose(second, cached_text_embeddings(changed, None, None, progress=False,
                                                              encoder=encoder), atol=1e-5)


def test_a_tuned_encoder_with_the_base_models_config_and_sizes_has_its_own_cache_key(tmp_path: Path) -> None:
    """A fine-tuned encoder keeps the base model's config and weight-file sizes: the cache key must still differ
    (it reads the weights' bytes), or the tuned model would be served the base model's cached vectors."""
    import shutil

    from components.text_encoder import default_encoder_dir, encoder_key

    tuned = tmp_path / "tuned"
    shutil.copytree(default_encoder_dir(), tuned)
    weights = tuned / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one weight byte changed, same size
    weights.write_bytes(bytes(data))
    assert weights.stat().st_size == (default_encoder_dir() / "model.safetensors").stat().st_size
    assert encoder_key(tuned) != encoder_key(None)
    assert encoder_key(default_encoder_dir()) == encoder_key(None)


def test_stored_embeddings_are_served_without_encoding(encoder: SentenceEncoder, tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(2, 384)).astype(np.float32)
    store_text_embeddings(["x", "y"], vectors, None, tmp_path)
    counting = CountingEncoder(encoder)
    out = cached_text_embeddings(["y", "x", "z"], None, tmp_path, progress=False, encoder=counting)
    assert counting.texts == ["z"]
    np.testing.assert_array_equal(out[:2], vectors[[1, 0]])
    assert abs(np.linalg.norm(out[2]) - 1.0) < 1e-5  # the encoder's unit vector


def test_lora_on_the_top_layers_reruns_only_them_and_merges_into_the_weights(encoder: SentenceEncoder) -> None:
    """Before training LoRA is the plain encoder; once its adapters move, the vectors move, any subset of the texts
    gives the same vectors as the whole list (the cached lower-layer states), and the merged weights reproduce
    them with no adapter left."""
    import torch

    from components.text_encoder import EncoderError, LoraTextEncoder

    texts = list(dict.fromkeys(TEXTS))
    base = encoder.encode(texts)
    with pytest.raises(EncoderError, match="lora_layers=7"):
        LoraTextEncoder(SentenceEncoder(None), texts, layers=7, rank=4, alpha=8)
    tuner = LoraTextEncoder(SentenceEncoder(None), texts, layers=2, rank=4, alpha=8).eval()
    trainable = [name for name, p in tuner.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name and (".layer.4." in name or ".layer.5." in name) for name in trainable)
    index = torch.arange(len(texts))
    with torch.no_grad():
        np.testing.assert_allclose(tuner(index).numpy(), base, atol=1e-5)
        generator = torch.Generator().manual_seed(0)
        for name, p in tuner.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05, generator=generator)
        tuned = tuner(index).numpy()
        np.testing.assert_allclose(tuner(torch.tensor([3, 0])).numpy(), tuned[[3, 0]], atol=1e-6)
    assert np.abs(tuned - base).max() > 1e-2
    merged = tuner.merged()
    assert not [name for name, _ in merged.named_parameters() if "lora" in name]
    np.testing.assert_allclose(merged.encode(texts), tuned, atol=1e-5)


def test_worker_processes_encode_the_same_vectors_in_order(encoder: SentenceEncoder, tmp_path: Path,
                                                           monkeypatch) -> None:
    """More missing texts than two shards: worker processes (one thread each) encode them, in order, to the
    vectors one process gives, and the cache holds them afterwards."""
    from components import text_encoder

    monkeypatch.setattr(text_encoder, "SHARD_TEXTS", 8)
    texts = [f"item {i}: {TEXTS[i % 4]} no. {i * 7}" for i in range(37)]
    counting = CountingEncoder(encoder)
    sharded = cached_text_embeddings(texts, None, tmp_path, progress=False, encoder=counting, workers=2)
    assert counting.texts == []  # the workers encoded everything
    np.testing.assert_allclose(sharded, encoder.encode(texts), atol=1e-5)
    again = cached_text_embeddings(texts, None, tmp_path, progress=False, encoder=counting, workers=2)
    assert counting.texts == [] and np.array_equal(again, sharded)
    few = cached_text_embeddings(texts[:10] + ["one new text"], None, tmp_path, progress=False, encoder=counting,
                                 workers=2)
    assert counting.texts == ["one new text"] and np.array_equal(few[:10], sharded[:10])  # few: no workers


def test_many_missing_texts_are_encoded_by_the_onnx_export_to_the_same_vectors(encoder: SentenceEncoder,
                                                                               tmp_path: Path, monkeypatch) -> None:
    """From ONNX_MIN_TEXTS missing texts the frozen encoder runs as its ONNX export on ONNX Runtime (in one process
    and in worker processes): the torch encoder's vectors, in order; the export is made once per encoder."""
    from components import text_encoder

    monkeypatch.setattr(text_encoder, "ONNX_MIN_TEXTS", 20)
    monkeypatch.setattr(text_encoder, "SHARD_TEXTS", 8)
    texts = [f"item {i}: {TEXTS[i % 4]} no. {i * 7}" for i in range(37)]
    one = cached_text_embeddings(texts[:24], None, tmp_path / "one", progress=False)
    exported = list((tmp_path / "one").glob("text_encoder_*.onnx"))
    assert len(exported) == 1
    np.testing.assert_allclose(one, encoder.encode(texts[:24]), atol=1e-5)
    made = exported[0].stat().st_mtime_ns
    more = cached_text_embeddings(texts[::-1], None, tmp_path / "one", progress=False, workers=2)  # 13 new: torch
    np.testing.assert_allclose(more[::-1], encoder.encode(texts), atol=1e-5)
    assert exported[0].stat().st_mtime_ns == made
    workers = cached_text_embeddings(texts, None, tmp_path / "workers", progress=False, workers=2)
    assert len(list((tmp_path / "workers").glob("text_encoder_*.onnx"))) == 1
    np.testing.assert_allclose(workers, encoder.encode(texts), atol=1e-5)


def test_the_static_encoder_averages_its_token_table_and_exports_the_same(tmp_path: Path) -> None:
    """wordllama-l2-256: the mean of the words' rows in the shipped table (read here with `tokenizers` and
    `safetensors` alone, no start token), L2-normalized; its ONNX export, its saved copy and the cache agree."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from components.compress_export import encode_with, export_text_encoder_onnx, session
    from components.text_encoder import (
        WORDLLAMA,
        StaticEmbeddingEncoder,
        _wordllama_files,
        encoder_key,
        is_static,
        load_text_encoder,
        load_tokenizer,
    )

    texts = [t for t in TEXTS if t] + ["GoldenEye (1995). Genres: Action|Adventure|Thriller."]
    weights, tokenizer_file = _wordllama_files()
    table = load_file(str(weights))["embedding.weight"].astype(np.float32)
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    expected = np.stack([table[tokenizer.encode(t, add_special_tokens=False).ids].mean(0) for t in texts])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)

    encoder = load_text_encoder(WORDLLAMA)
    assert isinstance(encoder, StaticEmbeddingEncoder) and encoder.dim == 256 and is_static(WORDLLAMA)
    got = encoder.encode(texts)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    onnx_file = export_text_encoder_onnx(encoder, tmp_path / "text_encoder.onnx")
    np.testing.assert_allclose(encode_with(session(onnx_file), load_tokenizer(WORDLLAMA), texts), expected, atol=1e-6)

    encoder.save(tmp_path / "saved")
    assert is_static(tmp_path / "saved") and not is_static(None)
    np.testing.assert_array_equal(load_text_encoder(tmp_path / "saved").encode(texts), got)
    np.testing.assert_allclose(encode_with(session(onnx_file), load_tokenizer(tmp_path / "saved"), texts), expected,
                               atol=1e-6)
    assert len({encoder_key(None), encoder_key(WORDLLAMA), encoder_key(tmp_path / "saved")}) == 3
    cached = cached_text_embeddings(texts, WORDLLAMA, tmp_path / "cache", progress=False)
    np.testing.assert_allclose(cached, got, atol=1e-6)
    assert cached_text_embeddings(texts[:1], None, tmp_path / "cache", progress=False).shape == (1, 384)


def test_many_missing_texts_of_a_static_encoder_stay_on_torch(tmp_path: Path, monkeypatch) -> None:
    """A token table's forward is one gather: past ONNX_MIN_TEXTS it is not exported (that cost more than it saved)."""
    from components import text_encoder

    monkeypatch.setattr(text_encoder, "ONNX_MIN_TEXTS", 4)
    texts = [f"item {i}: {TEXTS[i % 4]}" for i in range(12)]
    got = cached_text_embeddings(texts, text_encoder.WORDLLAMA, tmp_path, progress=False)
    assert not list(tmp_path.glob("text_encoder_*.onnx"))
    np.testing.assert_allclose(got, text_encoder.load_text_encoder(text_encoder.WORDLLAMA).encode(texts), atol=1e-6)
    cached_text_embeddings(texts[:6], None, tmp_path / "minilm", progress=False)  # a transformer still is exported
    assert len(list((tmp_path / "minilm").glob("text_encoder_*.onnx"))) == 1


def test_a_folder_without_an_encoder_is_refused_naming_the_shipped_ones(tmp_path: Path) -> None:
    from components.text_encoder import EncoderError, load_text_encoder

    with pytest.raises(EncoderError, match=rf"no text encoder .* in encoder directory {tmp_path}.*wordllama-l2-256"):
        load_text_encoder(tmp_path)


def test_no_texts_give_no_rows_of_the_encoders_own_width(tmp_path: Path) -> None:
    """An empty list keeps the width of the encoder asked for (read from its files), cached or in workers."""
    from components.text_encoder import WORDLLAMA, encode_in_workers, encoder_dim, load_text_encoder

    saved = tmp_path / "saved"
    load_text_encoder(WORDLLAMA).save(saved)
    for source, width in ((WORDLLAMA, 256), (None, 384), (saved, 256)):
        assert encoder_dim(source) == width
        assert cached_text_embeddings([], source, tmp_path / "cache", progress=False).shape == (0, width)
        assert encode_in_workers([], source, workers=2).shape == (0, width)
