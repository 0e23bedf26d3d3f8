"""The packaged MiniLM encoder and its DuckDB embedding cache, run for real on CPU."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the model is a local folder; any hub access must fail

from pathlib import Path  # noqa: E402

import duckdb  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from grec_dagster.llm.embedding_cache import embed_with_cache  # noqa: E402
from grec_dagster.llm.text_encoder import TextEncoder, TextEncoderConfig  # noqa: E402

TEXTS = [
    "Men's lightweight running shoes with breathable mesh",
    "Stainless steel chef's knife, 8 inch",
    "",
    "Robert'); DROP TABLE text_embeddings;--",
    "Café crème — naïve façade 東京 🎬",
    "Comedy|Romance",
    "A long description, truncated at max_length tokens. " * 40,
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    """The default encoder with a small batch, so a handful of texts spans several batches."""
    return TextEncoder(TextEncoderConfig(batch_size=3))


@pytest.fixture(scope="module")
def fp32_encoder() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(dtype=torch.float32, batch_size=3))


class RecordingEncoder:
    """The real encoder, remembering which texts it was asked to encode."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner = inner
        self.encoded: list[str] = []

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.encoded.extend(texts)
        return self.inner.encode(texts)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=-1)


def test_fp32_matches_sentence_transformers_reference(fp32_encoder: TextEncoder) -> None:
    # Recorded once with sentence-transformers 6.2 on this checkpoint (mean pooling + L2).
    eating, bread = fp32_encoder.encode(["A man is eating food.", "A man is eating a piece of bread."])
    reference = torch.tensor([0.0332416, 0.0044061, -0.0062770, 0.0483788, -0.1387023, -0.0336174])
    assert torch.allclose(eating[:6], reference, atol=1e-5)
    assert cosine(eating, bread).item() == pytest.approx(0.7553372, abs=1e-5)


def test_close_sentences_are_closer_than_unrelated_ones(encoder: TextEncoder) -> None:
    anchor, paraphrase, unrelated = encoder.encode(
        [
            "Lightweight running shoes for men",
            "Men's athletic sneakers for jogging",
            "Stainless steel chef's knife, 8 inch",
        ]
    )
    assert cosine(anchor, paraphrase) > cosine(anchor, unrelated) + 0.2


def test_output_is_normalized_float32_in_input_order(encoder: TextEncoder) -> None:
    batched = encoder.encode(TEXTS)
    one_by_one = torch.cat([encoder.encode([text]) for text in TEXTS])
    reversed_input = encoder.encode(TEXTS[::-1])

    assert batched.shape == (len(TEXTS), encoder.dim) == (len(TEXTS), 384)
    assert batched.dtype == torch.float32
    assert torch.allclose(batched.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert cosine(batched, one_by_one).min() > 0.999
    assert cosine(batched, reversed_input.flip(0)).min() > 0.999
    assert encoder.encode([]).shape == (0, 384)


def test_default_dtype_stays_close_to_fp32(encoder: TextEncoder, fp32_encoder: TextEncoder) -> None:
    similarity = cosine(encoder.encode(TEXTS), fp32_encoder.encode(TEXTS))
    assert similarity.mean() > 0.99
    assert encoder.model_id != fp32_encoder.model_id


def test_cache_encodes_only_new_distinct_texts(encoder: TextEncoder, tmp_path: Path) -> None:
    recording = RecordingEncoder(encoder)
    first = ["red shoes", "blue shoes", "red shoes", "a knife"]
    with duckdb.connect(tmp_path / "warehouse.duckdb") as con:
        vectors, stats = embed_with_cache(first, recording, con)
    assert sorted(recording.encoded) == ["a knife", "blue shoes", "red shoes"]
    assert (stats.computed, stats.reused) == (3, 0)
    assert torch.equal(vectors[0], vectors[2])

    recording.encoded.clear()
    second = ["a knife", "green hat", "red shoes", "green hat"]
    with duckdb.connect(tmp_path / "warehouse.duckdb") as con:
        again, stats = embed_with_cache(second, recording, con)
    assert recording.encoded == ["green hat"]
    assert (stats.computed, stats.reused) == (1, 2)
    assert torch.equal(again[0], vectors[3]) and torch.equal(again[2], vectors[0])
    assert cosine(again, encoder.encode(second)).min() > 0.999


def test_cached_vectors_equal_fresh_ones_in_input_order(encoder: TextEncoder) -> None:
    texts = TEXTS + TEXTS[::2]
    with duckdb.connect() as con:
        computed, _ = embed_with_cache(texts, encoder, con, chunk_size=2)
        cached, stats = embed_with_cache(texts[::-1], encoder, con)
        stored = con.execute("SELECT count(*), min(dim), max(len(vector)) FROM text_embeddings").fetchone()
    fresh = encoder.encode(texts[::-1])

    assert (stats.computed, stats.reused) == (0, len(TEXTS))
    assert stored == (len(TEXTS), 384, 384)
    assert torch.equal(cached, computed.flip(0))
    assert cosine(cached, fresh).min() > 0.999


def test_cache_is_separate_per_model(encoder: TextEncoder, fp32_encoder: TextEncoder) -> None:
    texts = ["red shoes", "a knife"]
    with duckdb.connect() as con:
        embed_with_cache(texts, encoder, con)
        _, stats = embed_with_cache(texts, fp32_encoder, con)
    assert (stats.computed, stats.reused) == (2, 0)
