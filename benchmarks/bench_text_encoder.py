"""Throughput of the text encoder and its cache, measured side by side in one run.

Prints texts/s for fp32 vs bf16 and batched vs one text per call (best of `--rounds`,
the variants interleaved so background load hits them alike), the fp32-bf16 agreement,
and a repeated set embedded through the DuckDB cache uncached vs cached, once with the
model and once at catalog scale with the model replaced by random vectors.

    python benchmarks/bench_text_encoder.py [--texts 256] [--catalog 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import duckdb  # noqa: E402
import torch  # noqa: E402

from grec_dagster.llm.embedding_cache import Encoder, embed_with_cache  # noqa: E402
from grec_dagster.llm.text_encoder import TextEncoder, TextEncoderConfig  # noqa: E402

WORDS = (
    "lightweight breathable running shoe leather wallet stainless steel knife wireless "
    "headphones noise cancelling cotton shirt kitchen durable premium compact travel "
    "waterproof jacket ergonomic office chair classic drama comedy thriller family"
).split()


def item_texts(count: int, seed: int = 0) -> list[str]:
    """Catalog-like texts: a short title and category, then a description of 0-150 words."""
    rng = random.Random(seed)
    return [
        f"{' '.join(rng.choices(WORDS, k=4))} | {rng.choice(WORDS)} | brand{rng.randrange(50)} | "
        + " ".join(rng.choices(WORDS, k=rng.randrange(150)))
        for _ in range(count)
    ]


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


class RandomUnitEncoder:
    """Instant stand-in for the model, so the cache's own cost at catalog scale shows alone."""

    model_id = "random-unit"
    dim = 384

    def encode(self, texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(len(texts), self.dim), dim=-1)


def cache_seconds(corpus: list[str], encoder: Encoder, rounds: int) -> tuple[float, float]:
    """Best times to embed `corpus` into an empty cache, then again from that cache."""
    uncached = cached = float("inf")
    for _ in range(rounds):
        with duckdb.connect() as con:
            uncached = min(uncached, seconds(lambda con=con: embed_with_cache(corpus, encoder, con)))
            cached = min(cached, seconds(lambda con=con: embed_with_cache(corpus, encoder, con)))
    return uncached, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256, help="catalog texts per encoder run")
    parser.add_argument("--catalog", type=int, default=100_000, help="texts for the cache-only run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    texts = item_texts(args.texts)
    encoders = {
        "fp32": TextEncoder(TextEncoderConfig(dtype=torch.float32)),
        "bf16": TextEncoder(TextEncoderConfig(dtype=torch.bfloat16)),
    }
    for encoder in encoders.values():
        encoder.encode(texts[:8])  # the first call pays one-off kernel set-up

    runs: dict[tuple[str, str], Callable[[], object]] = {}
    for name, encoder in encoders.items():
        runs[name, "batched"] = lambda e=encoder: e.encode(texts)
        runs[name, "one-at-a-time"] = lambda e=encoder: [e.encode([text]) for text in texts]
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):
        for key, run in runs.items():
            best[key] = min(best[key], seconds(run))
    rate = {key: len(texts) / seconds for key, seconds in best.items()}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(texts)} texts, best of {args.rounds}")
    print(f"{'texts/s':<16}{'fp32':>10}{'bf16':>10}{'bf16/fp32':>11}")
    for mode in ("batched", "one-at-a-time"):
        fp32, bf16 = rate["fp32", mode], rate["bf16", mode]
        print(f"{mode:<16}{fp32:>10.1f}{bf16:>10.1f}{bf16 / fp32:>10.2f}x")
    for name in encoders:
        ratio = rate[name, "batched"] / rate[name, "one-at-a-time"]
        print(f"batched / one-at-a-time ({name}): {ratio:.2f}x")

    similarity = (encoders["fp32"].encode(texts) * encoders["bf16"].encode(texts)).sum(dim=-1)
    print(f"cosine(fp32, bf16) over {len(texts)} texts: mean {similarity.mean():.5f}, min {similarity.min():.5f}")

    default = TextEncoder()
    print(f"default encoder: {default.model_id}")
    for label, cache_encoder, corpus in (
        ("model", default, texts),
        ("cache bookkeeping only", RandomUnitEncoder(), item_texts(args.catalog, seed=1)),
    ):
        uncached, cached = cache_seconds(corpus, cache_encoder, args.rounds)
        print(
            f"{label}, {len(corpus)} texts twice: uncached {len(corpus) / uncached:,.0f}/s, "
            f"cached {len(corpus) / cached:,.0f}/s, cached/uncached {uncached / cached:.1f}x"
        )


if __name__ == "__main__":
    main()
