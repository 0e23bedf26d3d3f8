"""Wall time of `grec recommend USER -k 10` on MovieLens-100K, first call and the calls after it,
for the gated fusion (the default) and one tower alone, side by side in one run.

Run from the repository root after `make demo` (or against any materialized GREC_HOME):
``python -m benchmarks.bench_recommend [--home .grec] [--tower lightgcn] [--calls 10]``.
The `grec` console script runs as a user would, in a fresh process each time, on a copy of the
home's serving index removed first: the first call builds the on-disk index, the next ones answer
from it. The target is under a second per call after the first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from grec_dagster.layout import GATED_FUSION, HomeLayout

TARGET_SECONDS = 1.0


def timed_call(grec: str, user: str, model: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([grec, "recommend", user, "-k", "10", "--model", model], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(done.stderr)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=HomeLayout.current().home, help="A materialized GREC_HOME.")
    parser.add_argument("--user", default="196", help="A MovieLens user id.")
    parser.add_argument("--tower", default="lightgcn", help="The tower timed beside the gated fusion.")
    parser.add_argument("--calls", type=int, default=10, help="Calls timed after the first.")
    args = parser.parse_args()

    home = HomeLayout(args.home.resolve())
    env = os.environ | {"GREC_HOME": str(home.home)}
    grec = str(Path(sys.executable).with_name("grec"))
    print(f"`grec recommend {args.user} -k 10` on {home.home}, wall time of a fresh process\n")
    print("| model | first (builds the index) | later, median | later, best | later, worst |\n|---|---|---|---|---|")
    medians = {}
    for model in (GATED_FUSION, args.tower):
        home.serving_index.unlink(missing_ok=True)
        first = timed_call(grec, args.user, model, env)
        after = [timed_call(grec, args.user, model, env) for _ in range(args.calls)]
        medians[model] = statistics.median(after)
        print(f"| {model} | {first:.2f} | {medians[model]:.2f} | {min(after):.2f} | {max(after):.2f} |")
    verdict = "met" if max(medians.values()) < TARGET_SECONDS else "NOT met"
    print(f"\ntarget: later calls under {TARGET_SECONDS:.0f} s: {verdict}")


if __name__ == "__main__":
    main()
