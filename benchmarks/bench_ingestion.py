"""Ingestion of 1M synthetic rows, alone and followed by the blocking quality checks, side by side.

Run from the repository root: ``python -m benchmarks.bench_ingestion [--help]``.
The synthetic shop's log (a share of its rows damaged, as real logs are) is written as one CSV
in a landing folder, then ingested as the `raw_interactions` asset ingests a file: read and
type it, apply the row rules, replace its partition in a DuckDB file. Then the GX suite of
`raw_interactions_quality` judges that partition. Every stage is timed best of ``--repeats``
in this one run; GX's import, paid once per process, is reported apart.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from grec_dagster.data.quality import QualityParams, check_interactions, utc_now
from grec_dagster.data.sources import SourceParams, make_source
from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
from grec_dagster.data.validation import enforce_row_rules, validate_catalog
from grec_dagster.data.warehouse import replace_batches, replace_catalog

FILE = "events.csv"


def best_seconds(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """The fastest of `repeats` runs, and what the last run returned."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def write_dirty_log(log: pd.DataFrame, path: Path, dirty: float, seed: int) -> None:
    """The log as CSV, with `dirty` of its rows damaged: blank user ids, garbled times, repeated events."""
    text = log[["user_id", "item_id", "ts", "event", "value"]].astype("string")
    rng = np.random.default_rng(seed)
    damaged = rng.choice(len(text), size=int(dirty * len(text)), replace=False)
    blank, garbled, repeated = np.array_split(damaged[damaged > 0], 3)
    text.loc[blank, "user_id"] = ""
    text.loc[garbled, "ts"] = "yesterday"
    text.loc[repeated] = text.loc[repeated - 1].to_numpy()
    text.to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dirty", type=float, default=0.01, help="Share of rows damaged before ingestion.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    shop = generate_synthetic(SyntheticConfig(n_interactions=args.rows, seed=args.seed))
    params, now = QualityParams(), utc_now()
    with tempfile.TemporaryDirectory() as folder:
        landing = Path(folder)
        write_dirty_log(shop.interactions, landing / FILE, args.dirty, args.seed)
        source = make_source(SourceParams(kind="files", interactions_path=str(landing / "*.csv")))
        rules = params.row_rules(now, catalog=pd.Index(shop.items["item_id"]))

        with duckdb.connect(str(landing / "warehouse.duckdb")) as con:
            replace_catalog(con, "items", validate_catalog(shop.items, "item_id", "items"))
            read_s, parsed = best_seconds(lambda: source.interactions(FILE), args.repeats)
            rules_s, batch = best_seconds(lambda: enforce_row_rules(parsed, rules), args.repeats)
            write_s, _ = best_seconds(lambda: replace_batches(con, {FILE: batch}), args.repeats)

            import_started = time.perf_counter()
            check_interactions(con, params, now, source=FILE)  # the first call pays GX's import
            first_check_s = time.perf_counter() - import_started
            check_s, report = best_seconds(
                lambda: check_interactions(con, params, now, source=FILE, previous_rows=len(batch.accepted)),
                args.repeats,
            )

    ingest_s = read_s + rules_s + write_s
    rows = args.rows
    print(f"{rows:,} synthetic rows, {args.dirty:.0%} damaged: {batch.accounting()}")
    print(f"checks: {report.summary()}\n")
    print(f"{'stage':<34}{'seconds':>9}{'rows/s':>13}")
    for stage, seconds in (
        ("read + type the CSV", read_s),
        ("row rules", rules_s),
        ("replace the partition in DuckDB", write_s),
        ("ingestion alone", ingest_s),
        ("GX checks (raw_interactions)", check_s),
        ("ingestion + checks", ingest_s + check_s),
    ):
        print(f"{stage:<34}{seconds:>9.2f}{rows / seconds:>13,.0f}")
    print(f"\n{'checks / ingestion':<34}{check_s / ingest_s:>8.2f}x")
    print(f"{'(ingestion + checks) / ingestion':<34}{(ingest_s + check_s) / ingest_s:>8.2f}x")
    print(f"{'row rules / read + type':<34}{rules_s / read_s:>8.2f}x")
    print(f"GX import, once per process: {first_check_s - check_s:.1f} s (first check {first_check_s:.1f} s)")


if __name__ == "__main__":
    main()
