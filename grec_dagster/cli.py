"""The `grec` command: set up GREC_HOME, fetch data, ingest your files, print results, recommend,
compare runs, open the UIs.

It reads the same places the Dagster definitions write (GREC_HOME, overridden by GREC_CONFIG),
so what it prints is what the assets wrote. It imports nothing heavy it does not need: only
`grec ingest` imports Dagster (it runs the ingestion assets), and `grec recommend` needs only
NumPy once its index is built.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from grec_dagster.layout import GATED_FUSION, SERVABLE, HomeLayout
from grec_dagster.settings import MLFLOW_EXPERIMENT, user_setting

if TYPE_CHECKING:
    from grec_dagster.definitions import Ingestion

DAGSTER_YAML = """\
# Written by `grec init`: the local Dagster instance of grec, SQLite storage under this folder.
telemetry:
  enabled: false
nux:
  enabled: false  # no community sign-up pop-up in the UI of a service
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
    home = HomeLayout.current()
    dagster_home = home.dagster_home
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    for folder in (home.checkpoints, home.data_cache):
        folder.mkdir(parents=True, exist_ok=True)
    return dagster_home


def _cmd_init(_: argparse.Namespace) -> int:
    dagster_home = init_home()
    home = HomeLayout.current()
    _create_tracking_store(home.mlflow_tracking_uri)
    print(f"GREC_HOME={home.home}\nDAGSTER_HOME={dagster_home}\nMLflow store: {home.mlflow_tracking_uri}")
    return 0


def _create_tracking_store(tracking_uri: str) -> None:
    """Create (migrate) the MLflow store once, up front: several step processes creating a fresh
    SQLite store at the same moment race on its schema migrations."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)


def _cmd_data_fetch(_: argparse.Namespace) -> int:
    from grec_dagster.data.movielens import fetch_movielens_100k

    folder = fetch_movielens_100k(HomeLayout.current().data_cache)
    print(f"MovieLens-100K verified in {folder}")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    """Every file of the `files` source ingested as its partition, on GREC_HOME's Dagster instance."""
    import dagster as dg

    from grec_dagster.data.errors import DataSourceError
    from grec_dagster.definitions import ingest_landed_files

    dagster_home = init_home()
    failed = 0
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        try:
            for done in ingest_landed_files(instance, again=args.all):
                failed += not done.ok
                _print_ingestion(done)
        except DataSourceError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    if failed:
        print(f"{failed} not ingested or held back: fix and run `grec ingest` again", file=sys.stderr)
        return 1
    train = "dagster asset materialize -m grec_dagster.definitions --select 'interaction_graph*'"
    print(f"\nnext: DAGSTER_HOME={dagster_home} {train}")
    return 0


def _print_ingestion(done: Ingestion) -> None:
    if done.unchanged:
        print(f"{done.name}: unchanged since it was ingested (`grec ingest --all` ingests it again)")
    if done.accounting:
        print(f"{done.name}: {done.accounting}")
    if done.refused:
        print(f"error: {done.refused}", file=sys.stderr)
    for check in done.failed_checks:
        print(f"error: {done.name} is stored but held back from training: {check}", file=sys.stderr)


def _cmd_results(args: argparse.Namespace) -> int:
    import duckdb

    from grec_dagster.evaluation.results import load_results
    from grec_dagster.evaluation.tables import headline_table, markdown_preview

    warehouse = _warehouse()
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


def _warehouse() -> Path:
    return Path(user_setting("warehouse", "path", HomeLayout.current().warehouse))


def _cmd_recommend(args: argparse.Namespace) -> int:
    from grec_dagster.serving.index import IndexInputs, load_index

    home = HomeLayout.current()
    inputs = IndexInputs(
        checkpoints=Path(user_setting("checkpoints", "root", home.checkpoints)),
        warehouse=_warehouse(),
    )
    try:
        index = load_index(inputs, home.serving_index)
        answer = index.recommend(args.user, args.k, args.model)
    except (FileNotFoundError, KeyError) as error:
        print(f"cannot recommend yet: {error.args[0]}", file=sys.stderr)
        return 1
    for note in index.notes:
        print(f"note: {note}", file=sys.stderr)
    rows = [
        {
            "rank": rank,
            "item_id": str(index.item_ids[pick.item]),
            "title": str(index.titles[pick.item]),
            "score": round(pick.score, 6),
            "tower": pick.tower,
        }
        for rank, pick in enumerate(answer.picks, 1)
    ]
    if args.json:
        print(json.dumps({"user_id": args.user, "model": args.model, "rule": answer.rule, "picks": rows}))
        return 0
    rule = f" ({answer.rule})" if answer.rule else ""
    print(f"top {len(rows)} for user {args.user} by {args.model}{rule}\n")
    print(f"{'rank':>4}  {'item':<12}  {'tower':<28}  {'score':>8}  title")
    for row in rows:
        print(f"{row['rank']:>4}  {row['item_id']:<12}  {row['tower']:<28}  {row['score']:>8.3f}  {row['title']}")
    return 0


def _mlflow_tracking_uri() -> str:
    return str(user_setting("mlflow", "tracking_uri", HomeLayout.current().mlflow_tracking_uri))


def _cmd_runs_compare(args: argparse.Namespace) -> int:
    from grec_dagster.training.runs import compare_runs

    experiment = args.experiment or user_setting("mlflow", "experiment", MLFLOW_EXPERIMENT)
    last = args.last or (100 if args.over_seeds else 10)
    try:
        table = compare_runs(_mlflow_tracking_uri(), experiment, last, args.prefix, args.over_seeds)
    except LookupError as error:
        print(error, file=sys.stderr)
        return 1
    if table.empty:
        print(f"no runs with metrics in experiment {experiment!r}", file=sys.stderr)
        return 1
    print(table.to_string(float_format=lambda value: f"{value:.4f}", na_rep="-"))
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from grec_dagster.ui import serve, ui_services

    dagster_home = init_home()
    env = os.environ | {"DAGSTER_HOME": str(dagster_home)}
    services = ui_services(args.dagster_port, args.mlflow_port, _mlflow_tracking_uri(), dagster_home)
    return serve(services, env, HomeLayout.current().logs, args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init", help="create GREC_HOME, the local Dagster instance and the MLflow store").set_defaults(
        run=_cmd_init
    )
    data = commands.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    data.add_parser("fetch", help="download and verify MovieLens-100K").set_defaults(run=_cmd_data_fetch)
    ingest = commands.add_parser(
        "ingest", help="ingest every file of the `files` source (GREC_CONFIG) as its partition, without the daemon"
    )
    ingest.add_argument("--all", action="store_true", help="also files whose content was ingested before")
    ingest.set_defaults(run=_cmd_ingest)
    results = commands.add_parser("results", help="print the evaluation results table")
    results.add_argument("--dataset", default=None, help="only this dataset (e.g. movielens-100k)")
    results.add_argument("--segment", default="all", help="all, cold_users, warm_users, head_items, tail_items, cold_items")
    results.set_defaults(run=_cmd_results)
    recommend = commands.add_parser("recommend", help="a user's top items, and which tower drove each")
    recommend.add_argument("user", help="the user's id in your data (e.g. 196 for MovieLens)")
    recommend.add_argument("-k", type=int, default=10, help="how many items")
    recommend.add_argument(
        "--model",
        default=GATED_FUSION,
        choices=SERVABLE,
        help="what ranks: the gated fusion the pipeline learned (default) or one tower alone",
    )
    recommend.add_argument("--json", action="store_true", help="one JSON object, for programs")
    recommend.set_defaults(run=_cmd_recommend)
    runs = commands.add_parser("runs", help="MLflow runs").add_subparsers(dest="runs_command", required=True)
    compare = runs.add_parser("compare", help="the metrics of an experiment's runs side by side")
    compare.add_argument("--experiment", default=None, help="default: the mlflow resource's experiment")
    compare.add_argument("--last", type=int, default=None, help="how many of the newest runs (10; 100 --over-seeds)")
    compare.add_argument("--prefix", default="test_", help="only metrics starting with this ('' for all)")
    compare.add_argument(
        "--over-seeds",
        action="store_true",
        help="one column per model and commit: runs, seeds, and each metric's mean ± std over the seeds",
    )
    compare.set_defaults(run=_cmd_runs_compare)
    ui = commands.add_parser("ui", help="start the Dagster UI and the MLflow UI; Ctrl-C stops both")
    ui.add_argument("--dagster-port", type=int, default=3000)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for both to answer")
    ui.set_defaults(run=_cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
