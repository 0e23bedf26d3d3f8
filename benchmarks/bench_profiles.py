"""Profile generation with the packaged SmolLM2-135M on this machine, measured side by side in one run.

Prints the cost of each user's own grammar (compiled once per user: their options are enums), users/s
and tokens/s for the batched path against a naive one-user-at-a-time loop on the same users, then a
full run over the MovieLens-100K users (each user's 50 most recent ratings, their `--events` most
recent in the prompt, with real titles, genres and demographics; the target: all 943 in under 5
minutes), and the compute limit: the model FLOPs the run performed per second against a bf16 matmul
measured on the same cores. Last, the same full run with a previous commit's engine and its own
bench script in a child process (`--previous`, by default the last tree with prompt `profile_v2`,
the one issue 18 measured), so "no slower per user than before" is a ratio from one run.

    python benchmarks/bench_profiles.py [--users 943] [--events 10] [--batch-size 128] [--compare 16]
                                        [--data movielens|synthetic] [--previous fdcdb46 | --previous '']

Decoding settings (token budget, repetition penalty, dtype) are the `llm` resource's defaults, so the
run measures what `user_profiles` does.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from previous_tree import unpack_previous  # noqa: E402

from grec_dagster.data.movielens import fetch_movielens_100k, load_movielens_100k  # noqa: E402
from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic  # noqa: E402
from grec_dagster.layout import HomeLayout  # noqa: E402
from grec_dagster.llm.backends import ProfileBackend, TransformersBackend, shared_prefix  # noqa: E402
from grec_dagster.llm.constrained import JsonSchemaGrammars  # noqa: E402
from grec_dagster.llm.profile_schema import UserHistory, choices_json_schema  # noqa: E402
from grec_dagster.llm.profiles import DEFAULT_MAX_EVENTS, ProfileResult, generate_profiles  # noqa: E402
from grec_dagster.llm.prompting import load_prompt  # noqa: E402
from grec_dagster.llm.texts import histories_from_frames  # noqa: E402
from grec_dagster.llm.vocabulary import Catalog, catalog_for, profile_requests  # noqa: E402
from grec_dagster.resources import LlmResource  # noqa: E402

PREVIOUS = "fdcdb46"
"""The last commit with prompt `profile_v2` (free-text interests and segments), issue 18's starting point."""
HISTORY_EVENTS = 50
"""Events per user the pipeline holds (`user_histories`' default); segments are placed by all of them."""


def dataset(name: str, users: int) -> tuple[list[UserHistory], Catalog]:
    """Every user's history and the catalog (segments fitted on all users) of MovieLens-100K or of a
    synthetic shop with about `users` users."""
    if name == "movielens":
        frames = load_movielens_100k(fetch_movielens_100k(HomeLayout.current().data_cache))
    else:
        frames = generate_synthetic(SyntheticConfig(n_interactions=50 * users))
    histories = histories_from_frames(frames, HISTORY_EVENTS)
    return histories, catalog_for(frames.items, histories)


def grammar_cost(backend: TransformersBackend, histories: Sequence[UserHistory], catalog: Catalog, events: int) -> None:
    """Milliseconds to compile each user's grammar, on a compiler with nothing cached."""
    schemas = [choices_json_schema(r.options) for r in profile_requests(histories, catalog, events)]
    fresh = JsonSchemaGrammars(backend.tokenizer, backend.model.config.vocab_size, backend.stop_token_ids)
    start = time.perf_counter()
    fresh.matchers(schemas)
    seconds = time.perf_counter() - start
    print(
        f"  {len(schemas)} per-user grammars compiled in {seconds:.2f} s: {1000 * seconds / len(schemas):.1f} ms per user"
    )


def prompt_sizes(backend: TransformersBackend, histories: Sequence[UserHistory], catalog: Catalog, events: int) -> None:
    """The tokens every prompt shares (run once per call) and the mean tokens each user adds (run per
    user, and attended over at every decode step)."""
    template = load_prompt()
    prompts = [backend.encode(template.messages(request)) for request in profile_requests(histories, catalog, events)]
    shared = len(shared_prefix(prompts))
    own = sum(len(prompt) - shared for prompt in prompts) / len(prompts)
    print(f"  {template.name}: {shared} shared tokens, {own:.0f} tokens of its own per user")


def timed(
    histories: Sequence[UserHistory], catalog: Catalog, backend: ProfileBackend, events: int
) -> tuple[list[ProfileResult], float]:
    start = time.perf_counter()
    results = generate_profiles(histories, catalog, backend, max_events=events)
    return results, time.perf_counter() - start


def one_at_a_time(
    histories: Sequence[UserHistory], catalog: Catalog, backend: ProfileBackend, events: int
) -> tuple[list[ProfileResult], float]:
    """The naive loop: one call per user, so nothing is batched and no prompt prefix is shared."""
    start = time.perf_counter()
    results = [generate_profiles([history], catalog, backend, max_events=events)[0] for history in histories]
    return results, time.perf_counter() - start


def rates(label: str, results: list[ProfileResult], seconds: float) -> float:
    users = len(results) / seconds
    new_tokens = sum(r.new_tokens for r in results) / seconds
    prompt_tokens = sum(r.prompt_tokens - r.cached_tokens for r in results) / seconds
    statuses = Counter(r.status.value for r in results)
    print(
        f"  {label:<28} {len(results):>4} users {seconds:7.1f} s  {users:6.2f} users/s  "
        f"{new_tokens:7.1f} new tok/s  {prompt_tokens:8.1f} computed prompt tok/s  {dict(statuses)}"
    )
    return users


def matmul_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * size**3 / (time.perf_counter() - start)


def model_flops(backend: TransformersBackend, results: list[ProfileResult]) -> float:
    """FLOPs the run performed: 2 x weights per token -- the tied lm_head only for generated tokens,
    as prefill keeps just the last position's logits -- plus attention, 4 x layers x width x context.
    Prompt tokens reused from the shared-prefix cache cost nothing (the prefix itself runs once)."""
    config = backend.model.config
    total = sum(p.numel() for p in backend.model.parameters())
    body = total - config.vocab_size * config.hidden_size
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * head_dim
    flops = 0.0
    for r in results:
        computed = r.prompt_tokens - r.cached_tokens
        flops += computed * (2 * body + attention * (r.cached_tokens + computed / 2))
        flops += r.new_tokens * (2 * total + attention * (r.prompt_tokens + r.new_tokens / 2))
    return flops


def previous_full_run(rev: str, args: argparse.Namespace) -> float:
    """Users/s of the full run by commit `rev`'s own engine and bench script, in a child process on the
    same users, each tree with its own decoding defaults."""
    with tempfile.TemporaryDirectory() as scratch:
        tree = unpack_previous(rev, Path(scratch), "grec_dagster", "benchmarks/bench_profiles.py")
        command = [
            sys.executable, str(tree / "benchmarks" / "bench_profiles.py"), "--users", str(args.users),
            "--compare", "1", "--data", args.data, "--events", str(args.events), "--threads", str(args.threads),
        ]  # fmt: skip
        child = subprocess.run(command, env=os.environ | {"PYTHONPATH": str(tree)}, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"the bench of {rev} failed: {child.stderr[-2000:]}")
    full_run = child.stdout.split("full run", 1)[1]
    print("\n".join("  " + line for line in full_run.splitlines()[1:3]))
    return float(re.search(r"([\d.]+) users/s", full_run).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--events", type=int, default=DEFAULT_MAX_EVENTS)
    parser.add_argument("--batch-size", type=int, default=LlmResource().batch_size)
    parser.add_argument("--data", choices=["movielens", "synthetic"], default="movielens")
    parser.add_argument("--compare", type=int, default=16, help="users run both batched and one at a time")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--previous", default=PREVIOUS, help="commit to compare the full run with ('' skips it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")

    start = time.perf_counter()
    backend = TransformersBackend.load(LlmResource(batch_size=args.batch_size).backend_config())
    print(f"SmolLM2-135M loaded in {time.perf_counter() - start:.1f} s; model id {backend.model_id}")
    histories, catalog = dataset(args.data, max(args.users, args.compare))
    print(
        f"{args.data}: {len(histories)} users, {len(catalog.categories)} categories, {len(catalog.brands)} brands, "
        f"{len(catalog.keywords.vocabulary)} keywords, {len(catalog.segments.vocabulary)} crowd segments"
    )
    timed(histories[:1], catalog, backend, args.events)  # warms the kernels

    print(f"\nprompt tokens over all {len(histories)} users, {args.events} events each:")
    prompt_sizes(backend, histories, catalog, args.events)
    grammar_cost(backend, histories, catalog, args.events)

    print(f"\nbatched vs one user at a time, the same {args.compare} users, {args.events} events each:")
    compare = histories[: args.compare]
    batched = rates(f"batch {args.batch_size}", *timed(compare, catalog, backend, args.events))
    naive = rates("one user per call (loop)", *one_at_a_time(compare, catalog, backend, args.events))
    print(f"  batched / naive: {batched / naive:.2f}x users/s")

    print(f"\nfull run, batch {args.batch_size}:")
    results, seconds = timed(histories[: args.users], catalog, backend, args.events)
    users_per_second = rates(f"batch {args.batch_size}", results, seconds)
    minutes_for_943 = 943 / users_per_second / 60
    verdict = "meets" if minutes_for_943 < 5 else "misses"
    print(f"  943 users would take {minutes_for_943:.1f} min: {verdict} the 5-minute target")

    flops = model_flops(backend, results)
    tokens = sum(r.prompt_tokens - r.cached_tokens + r.new_tokens for r in results)
    bf16, fp32 = matmul_flops(torch.bfloat16), matmul_flops(torch.float32)
    print("\ncompute limit:")
    print(f"  bf16 matmul {bf16 / 1e9:7.1f} GFLOP/s, fp32 matmul {fp32 / 1e9:7.1f} GFLOP/s ({bf16 / fp32:.1f}x)")
    print(
        f"  model {flops / tokens / 1e6:.0f} MFLOP/token (computed prompt and generated) x {tokens / seconds:.0f} tok/s "
        f"= {flops / seconds / 1e9:.1f} GFLOP/s, {flops / seconds / bf16:.1%} of the bf16 matmul rate"
    )
    print(f"  at the matmul rate: {bf16 / (flops / tokens):.0f} tok/s, {bf16 * len(results) / flops:.1f} users/s")

    if args.previous:
        print(f"\nthe same full run by commit {args.previous} (its engine, prompt and defaults), in a child process:")
        before = previous_full_run(args.previous, args)
        verdict = "no slower" if users_per_second >= before else "slower"
        print(f"  this tree / {args.previous}: {users_per_second / before:.2f}x users/s ({verdict} per user)")


if __name__ == "__main__":
    main()
