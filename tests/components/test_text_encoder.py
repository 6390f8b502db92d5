"""The per-text embedding cache: a retrain encodes only new or changed item texts, with the encoder's own output."""

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


def test_stored_embeddings_are_served_without_encoding(encoder: SentenceEncoder, tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(2, 384)).astype(np.float32)
    store_text_embeddings(["x", "y"], vectors, None, tmp_path)
    counting = CountingEncoder(encoder)
    out = cached_text_embeddings(["y", "x", "z"], None, tmp_path, progress=False, encoder=counting)
    assert counting.texts == ["z"]
    np.testing.assert_array_equal(out[:2], vectors[[1, 0]])
    assert abs(np.linalg.norm(out[2]) - 1.0) < 1e-5  # the encoder's unit vector
