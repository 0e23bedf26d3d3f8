"""Wall time of `grec recommend USER -k 10` on MovieLens-100K, first call and the calls after it.

Run from the repository root: ``python -m benchmarks.bench_recommend [--help]``.
In a throw-away GREC_HOME (MovieLens read from the shared data cache that `grec data fetch`
fills) the assets a recommendation needs are materialized through Dagster: ingestion, the
interaction graph, the popularity baselines and a LightGCN checkpoint (a few epochs: serving
time does not depend on how well it trained). Then the `grec` console script is run as a user
would, in a fresh process each time: the first call builds the on-disk index, the next ones
answer from it. The target is under a second per call after the first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TARGET_SECONDS = 1.0
NEEDED = ["raw_interactions", "items", "interaction_graph", "popularity_baselines", "lightgcn_checkpoint"]


def materialize(data_cache: Path, epochs: int) -> None:
    """On an ephemeral Dagster instance: only the files the assets write matter here."""
    import dagster as dg

    from grec_dagster.definitions import build_definitions

    defs = build_definitions({"source": {"kind": "movielens-100k", "cache_dir": str(data_cache)}})
    run_config = {"ops": {"lightgcn_checkpoint": {"config": {"epochs": epochs}}}}
    result = dg.materialize(defs.assets, selection=NEEDED, resources=defs.resources, run_config=run_config)
    if not result.success:
        sys.exit("materialization failed")


def timed_call(grec: str, user: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([grec, "recommend", user, "-k", "10"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(done.stderr)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user", default="196", help="A MovieLens user id.")
    parser.add_argument("--calls", type=int, default=10, help="Calls timed after the first.")
    parser.add_argument("--epochs", type=int, default=5, help="LightGCN epochs for the checkpoint served.")
    args = parser.parse_args()

    data_cache = Path(os.environ.get("GREC_HOME", ".grec")).resolve() / "data"
    grec = str(Path(sys.executable).with_name("grec"))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "grec"
        config = Path(tmp) / "grec.yaml"
        config.write_text(yaml.safe_dump({"source": {"kind": "movielens-100k", "cache_dir": str(data_cache)}}))
        env = os.environ | {"GREC_HOME": str(home), "GREC_CONFIG": str(config)}
        os.environ.update(env)
        started = time.perf_counter()
        materialize(data_cache, args.epochs)
        print(f"materialized {', '.join(NEEDED)} in {time.perf_counter() - started:.1f} s")

        first = timed_call(grec, args.user, env)
        after = [timed_call(grec, args.user, env) for _ in range(args.calls)]

    median = statistics.median(after)
    print(f"\n`grec recommend {args.user} -k 10` on MovieLens-100K, wall time of a fresh process\n")
    print("| call | seconds |\n|---|---|")
    print(f"| first (builds the index) | {first:.2f} |")
    print(f"| later, median of {args.calls} | {median:.2f} |")
    print(f"| later, best | {min(after):.2f} |")
    print(f"| later, worst | {max(after):.2f} |")
    verdict = "met" if median < TARGET_SECONDS else "NOT met"
    print(f"\ntarget: later calls under {TARGET_SECONDS:.0f} s: {verdict}")


if __name__ == "__main__":
    main()
