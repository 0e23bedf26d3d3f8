"""The `grec` command: set up GREC_HOME, fetch data, print results.

It talks to the same resources the Dagster definitions use, so what it prints is what the
assets wrote.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from grec_dagster.home import default_paths, grec_home

DAGSTER_YAML = """\
# Written by `grec init`: the local Dagster instance of grec, SQLite storage under this folder.
telemetry:
  enabled: false
concurrency:
  pools:
    # Pools without an explicit limit (the `gpu` pool of the training assets) run one step at a time.
    granularity: op
    default_limit: 1
  runs:
    max_concurrent_runs: 1
"""


def init_home() -> Path:
    """Create GREC_HOME and a Dagster instance config there, keeping an existing one."""
    paths = default_paths()
    dagster_home = Path(os.environ.get("DAGSTER_HOME", paths["dagster_home"]))
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    for key in ("checkpoints", "data_cache"):
        Path(paths[key]).mkdir(parents=True, exist_ok=True)
    return dagster_home


def _cmd_init(_: argparse.Namespace) -> int:
    dagster_home = init_home()
    print(f"GREC_HOME={grec_home()}\nDAGSTER_HOME={dagster_home}")
    return 0


def _cmd_data_fetch(_: argparse.Namespace) -> int:
    from grec_dagster.data.movielens import fetch_movielens_100k

    folder = fetch_movielens_100k(Path(default_paths()["data_cache"]))
    print(f"MovieLens-100K verified in {folder}")
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    import duckdb

    from grec_dagster.evaluation.results import load_results
    from grec_dagster.evaluation.tables import headline_table, markdown_preview

    warehouse = Path(default_paths()["warehouse"])
    if not warehouse.exists():
        print(f"no warehouse at {warehouse}: materialize the assets first (make demo)", file=sys.stderr)
        return 1
    with duckdb.connect(str(warehouse), read_only=True) as con:
        results = load_results(con, args.dataset)
    if results.empty:
        print("no evaluation results yet: materialize evaluation_report first", file=sys.stderr)
        return 1
    for dataset, rows in results.groupby("dataset", sort=False):
        print(f"\n{dataset}, test split, full ranking, segment {args.segment}\n")
        print(markdown_preview(headline_table(rows, segment=args.segment), 100))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init", help="create GREC_HOME and the local Dagster instance").set_defaults(run=_cmd_init)
    data = commands.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    data.add_parser("fetch", help="download and verify MovieLens-100K").set_defaults(run=_cmd_data_fetch)
    results = commands.add_parser("results", help="print the evaluation results table")
    results.add_argument("--dataset", default=None, help="only this dataset (e.g. movielens-100k)")
    results.add_argument("--segment", default="all", help="all, cold_users, warm_users, head_items, tail_items, cold_items")
    results.set_defaults(run=_cmd_results)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
