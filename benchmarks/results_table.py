"""The README's results table, rerunnable: `make results` (or `python benchmarks/results_table.py`).

Each run gets its own GREC_HOME under `<GREC_HOME>/results/` (warehouse, Dagster instance,
MLflow store, checkpoints), shares the fetched data, and is a plain
`dagster asset materialize` of the project, so the numbers are the pipeline's own:

- MovieLens-100K, temporal split: the whole graph (profiles, every tower, fusion, report);
- MovieLens-100K, per-user random 8:1:1 with split seeds 0, 1 and 2: popularity and LightGCN,
  to show LightGCN against RecBole's reference numbers and how much one split moves them.

A run whose warehouse already holds results is not run again (pass --rerun to force), so the
table can be reprinted cheaply. Printed: the headline metrics per model, the random protocol's
mean over seeds next to RecBole 1.2.1's LightGCN, and the fusion ratios the issues ask about.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import yaml

from grec_dagster.evaluation.results import load_results
from grec_dagster.evaluation.tables import headline_table
from grec_dagster.home import default_paths, grec_home

BIN = Path(sys.executable).parent
RECBOLE_LIGHTGCN = {"recall@10": 0.261, "ndcg@10": 0.305, "recall@20": 0.379, "ndcg@20": 0.323}
"""RecBole 1.2.1 LightGCN, default settings, ML-100K random 8:1:1 (the foundation issue's reference)."""
BASELINE_ONLY = "raw_interactions items users interaction_graph popularity_baselines lightgcn_checkpoint evaluation_report"
COLUMNS = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@20"]
MODEL_ORDER = [
    "most_popular",
    "most_popular_recent",
    "lightgcn",
    "graphsage",
    "temporal",
    "temporal_profiles",
    "llm",
    "popularity_tower",
    "static_fusion",
    "gated_fusion",
]
"""Baselines, then each tower alone, then the fusions."""


@dataclass(frozen=True)
class Run:
    protocol: str
    seed: int
    selection: str

    @property
    def name(self) -> str:
        return f"movielens-100k-{self.protocol}-seed{self.seed}"


RUNS = (
    Run("temporal", 0, "*"),
    Run("random", 0, BASELINE_ONLY),
    Run("random", 1, BASELINE_ONLY),
    Run("random", 2, BASELINE_ONLY),
)


def materialize(run: Run, root: Path, data_cache: str) -> Path:
    """Run the project's assets for one protocol in its own GREC_HOME; returns the warehouse path."""
    home = root / run.name
    home.mkdir(parents=True, exist_ok=True)
    (home / "grec.yaml").write_text(yaml.safe_dump({"source": {"kind": "movielens-100k", "cache_dir": data_cache}}))
    run_config = {
        "ops": {"interaction_graph": {"config": {"protocol": run.protocol, "seed": run.seed}}},
        "execution": {"config": {"in_process": {}}},
    }
    (home / "run.yaml").write_text(yaml.safe_dump(run_config))
    env = os.environ | {"GREC_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "GREC_CONFIG": str(home / "grec.yaml")}
    subprocess.run([str(BIN / "grec"), "init"], env=env, check=True)
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "grec_dagster.definitions"]
    command += ["--select", ",".join(run.selection.split()) if run.selection != "*" else "*", "-c", str(home / "run.yaml")]
    print(f"== {run.name}: {' '.join(command)}", flush=True)
    subprocess.run(command, env=env, check=True)
    return home / "warehouse.duckdb"


def read_results(warehouse: Path) -> pd.DataFrame:
    if not warehouse.exists():
        return pd.DataFrame()
    with duckdb.connect(str(warehouse), read_only=True) as con:
        tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
        return load_results(con) if "evaluation_results" in tables else pd.DataFrame()


def headline(results: pd.DataFrame, segment: str = "all") -> pd.DataFrame:
    table = headline_table(results[results["split"] == "test"], segment=segment).set_index("model")
    return table.reindex([m for m in MODEL_ORDER if m in table.index])[[c for c in COLUMNS if c in table.columns]]


def metric(results: pd.DataFrame, model: str, name: str, segment: str = "all") -> float:
    table = headline(results, segment)
    return float(table.loc[model, name]) if model in table.index else float("nan")


def report(by_run: dict[Run, pd.DataFrame]) -> str:
    lines = []
    temporal = by_run.get(RUNS[0], pd.DataFrame())
    if not temporal.empty:
        lines += ["### MovieLens-100K, temporal split (global 80/10/10 time cut)", "", headline(temporal).round(4).to_markdown(), ""]
        cold = {
            model: metric(temporal, model, "recall@20", "cold_items")
            for model in ("most_popular", "most_popular_recent", "lightgcn", "llm", "static_fusion", "gated_fusion")
        }
        lines += ["Cold items (no training event), Recall@20: " + ", ".join(f"{m} {v:.4f}" for m, v in cold.items()), ""]
        ratios = {
            "gated / static fusion, NDCG@20": metric(temporal, "gated_fusion", "ndcg@20") / metric(temporal, "static_fusion", "ndcg@20"),
            "gated fusion / LightGCN, NDCG@20": metric(temporal, "gated_fusion", "ndcg@20") / metric(temporal, "lightgcn", "ndcg@20"),
            "temporal + profiles / temporal, NDCG@20": metric(temporal, "temporal_profiles", "ndcg@20")
            / metric(temporal, "temporal", "ndcg@20"),
        }
        lines += [f"- {name}: {value:.3f}x" for name, value in ratios.items()] + [""]
    random_runs = {run: results for run, results in by_run.items() if run.protocol == "random" and not results.empty}
    if random_runs:
        rows = {}
        for run, results in random_runs.items():
            table = headline(results)
            for model in ("most_popular", "most_popular_recent", "lightgcn"):
                if model in table.index:
                    rows[(model, f"seed {run.seed}")] = table.loc[model]
        seeds = pd.DataFrame(rows).T
        means = seeds.groupby(level=0).mean()
        means.index = pd.MultiIndex.from_product([means.index, ["mean of seeds"]])
        recbole = pd.DataFrame([RECBOLE_LIGHTGCN], index=pd.MultiIndex.from_tuples([("RecBole 1.2.1 LightGCN", "reported")]))
        combined = pd.concat([seeds, means, recbole]).sort_index(level=0, sort_remaining=True)
        combined.index = [f"{model}, {which}" for model, which in combined.index]
        lines += ["### Random 8:1:1 over split seeds, against RecBole's LightGCN", "", combined.round(4).to_markdown(), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rerun", action="store_true", help="materialize again even when results exist")
    parser.add_argument("--only", choices=[run.name for run in RUNS], nargs="*", help="run only these")
    args = parser.parse_args()
    paths = default_paths()
    root = grec_home() / "results"
    by_run = {}
    for run in RUNS:
        warehouse = root / run.name / "warehouse.duckdb"
        wanted = args.only is None or run.name in args.only
        if wanted and (args.rerun or read_results(warehouse).empty):
            materialize(run, root, paths["data_cache"])
        by_run[run] = read_results(warehouse)
    text = report(by_run)
    (root / "results.md").write_text(text + "\n")
    print(text)
    print(f"(also written to {root / 'results.md'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
