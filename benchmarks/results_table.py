"""The README's results, rerunnable: `make results` (or `python benchmarks/results_table.py`).

Every number is the pipeline's own: each run is a plain `dagster asset materialize` of this project
in a GREC_HOME of its own under `<GREC_HOME>/results/`, sharing the fetched MovieLens-100K files, on
the asset defaults, and the evaluation report's table is read back from its warehouse. The runs use
`make demo`'s executor (`configs/demo.yaml`: two steps at a time, two trainings in the `gpu` pool),
which gives every step the same bits as one step at a time, in less wall time. Every model is
reported as mean ± std over seeds:

- temporal split (one split): the whole graph once (profiles included), then every training asset
  and the fusion again for each initialization seed, so the LLM profiles are written once;
- random 8:1:1 per user: a split seed and the same initialization seed, the whole graph per seed
  (the profiles read each split's training events).

A seed whose results are already stored is not run again (`--rerun` forces it), so the tables can be
reprinted cheaply. Printed: every model per segment (all, warm and cold users, head, tail and cold
items) as NDCG@20 and Recall@20, the random protocol against RecBole 1.2.1's LightGCN, and the ratios
the product claims rest on, each as mean ± std over seeds with a verdict that names a gain only when
it exceeds its spread.
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
from grec_dagster.layout import (
    EASE,
    FUSION_ASSET,
    GATED_FUSION,
    LIGHTGCN,
    MOST_POPULAR,
    MOST_POPULAR_RECENT,
    STATIC_FUSION,
    TEMPORAL,
    TEMPORAL_PROFILES,
    TOWERS,
    HomeLayout,
    Scorer,
)

BIN = Path(sys.executable).parent
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
SEEDS = (0, 1, 2)
PROTOCOLS = ("temporal", "random")
RECBOLE_LIGHTGCN = {"recall@10": 0.261, "ndcg@10": 0.305, "recall@20": 0.379, "ndcg@20": 0.323}
"""RecBole 1.2.1 LightGCN, default settings, ML-100K random 8:1:1 (the foundation issue's reference)."""
SEGMENTS = ("all", "warm_users", "cold_users", "head_items", "tail_items", "cold_items")
METRICS = (("ndcg", 20), ("recall", 20))
BASELINES = (MOST_POPULAR, MOST_POPULAR_RECENT)
MODEL_ORDER = (*BASELINES, *TOWERS, STATIC_FUSION, GATED_FUSION)
TRAINED_ASSETS = (*(spec.asset for spec in TOWERS.values() if spec.scorer == Scorer.EMBEDDINGS), FUSION_ASSET)
RETRAIN = "group:training or group:fusion or group:evaluation"


@dataclass(frozen=True)
class Run:
    protocol: str
    seed: int

    @property
    def home(self) -> str:
        """The temporal split has one GREC_HOME for all seeds; the random one a home per split."""
        return f"movielens-100k-{self.protocol}" + ("" if self.protocol == "temporal" else f"-split{self.seed}")

    def run_config(self) -> dict:
        seeded = [asset for asset in TRAINED_ASSETS if asset != TOWERS[EASE].asset]  # EASE: closed form, no seed
        ops = {asset: {"config": {"seed": self.seed}} for asset in seeded}
        ops["interaction_graph"] = {"config": {"protocol": self.protocol, "seed": self.seed}}
        return {"ops": ops, "execution": yaml.safe_load(DEMO_CONFIG.read_text())["execution"]}


def materialize(run: Run, root: Path, data_cache: Path, selection: str) -> None:
    home = root / run.home
    home.mkdir(parents=True, exist_ok=True)
    (home / "grec.yaml").write_text(
        yaml.safe_dump({"source": {"kind": "movielens-100k", "cache_dir": str(data_cache)}})
    )
    (home / "run.yaml").write_text(yaml.safe_dump(run.run_config()))
    env = os.environ | {
        "GREC_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "GREC_CONFIG": str(home / "grec.yaml"),
    }
    subprocess.run([str(BIN / "grec"), "init"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(BIN / "dagster"), "instance", "concurrency", "set", "gpu", "2"], env=env, check=True)
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "grec_dagster.definitions"]
    command += ["--select", selection, "-c", str(home / "run.yaml")]
    print(f"== {run.protocol} seed {run.seed}: {' '.join(command)}", flush=True)
    subprocess.run(command, env=env, check=True)


def stored(root: Path, run: Run) -> Path:
    return root / run.home / f"results-seed{run.seed}.parquet"


def collect(run: Run, root: Path, data_cache: Path, rerun: bool) -> pd.DataFrame:
    """The evaluation report's rows of one seed, run if not stored yet."""
    path = stored(root, run)
    if rerun or not path.exists():
        whole_graph = run.protocol != "temporal" or not (root / run.home / "warehouse.duckdb").exists()
        materialize(run, root, data_cache, "*" if whole_graph else RETRAIN)
        with duckdb.connect(str(root / run.home / "warehouse.duckdb"), read_only=True) as con:
            rows = load_results(con)
        rows[rows["split"] == "test"].assign(seed=run.seed).to_parquet(path, index=False)
    return pd.read_parquet(path)


def per_seed(results: pd.DataFrame, segment: str, metric: str, k: int) -> pd.DataFrame:
    """Rows: seeds; columns: models; values: `metric@k` on `segment`."""
    chosen = results[(results.segment == segment) & (results.metric == metric) & (results.k == k)]
    return chosen.pivot_table(index="seed", columns="model", values="value")


def spread(values: pd.Series) -> str:
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values.mean():.4f}"


def model_table(results: pd.DataFrame, metric: str, k: int) -> pd.DataFrame:
    columns = {}
    for segment in SEGMENTS:
        table = per_seed(results, segment, metric, k)
        columns[segment] = {model: spread(table[model].dropna()) for model in MODEL_ORDER if model in table}
    return pd.DataFrame(columns).reindex([m for m in MODEL_ORDER if m in columns["all"]])


def ratio(table: pd.DataFrame, numerator: str, denominator: str | list[str]) -> pd.Series:
    """Per seed: `numerator` over `denominator` (over the best of a list, chosen per seed)."""
    below = table[denominator].max(axis=1) if isinstance(denominator, list) else table[denominator]
    return table[numerator] / below


def verdict(ratios: pd.Series) -> str:
    mean, std = ratios.mean(), ratios.std(ddof=1)
    if len(ratios) < 2:
        return "one seed: no spread, no claim"
    if mean - 1 > std:
        return "gain beyond the spread"
    if 1 - mean > std:
        return "loss beyond the spread"
    return "within the spread: no gain"


def ratio_table(results: pd.DataFrame, segment: str = "all") -> pd.DataFrame:
    table = per_seed(results, segment, "ndcg", 20)
    singles = [model for model in (*BASELINES, *TOWERS) if model in table]
    claims = {
        "gated / static fusion": (GATED_FUSION, STATIC_FUSION),
        "gated fusion / best single model": (GATED_FUSION, singles),
        "static fusion / best single model": (STATIC_FUSION, singles),
        "gated fusion / LightGCN": (GATED_FUSION, LIGHTGCN),
        "temporal + profiles / temporal": (TEMPORAL_PROFILES, TEMPORAL),
    }
    rows = {}
    for name, (numerator, denominator) in claims.items():
        needed = [numerator, *(denominator if isinstance(denominator, list) else [denominator])]
        if all(model in table for model in needed):
            ratios = ratio(table, numerator, denominator)
            rows[name] = {"NDCG@20 ratio": spread(ratios), "seeds": len(ratios), "verdict": verdict(ratios)}
    return pd.DataFrame(rows).T


def best_single(results: pd.DataFrame) -> str:
    table = per_seed(results, "all", "ndcg", 20)
    singles = [model for model in (*BASELINES, *TOWERS) if model in table]
    return str(table[singles].mean().idxmax())


def recbole_table(results: pd.DataFrame) -> pd.DataFrame:
    rows = {}
    for model in (LIGHTGCN, MOST_POPULAR):
        rows[f"{model}, mean ± std of split seeds"] = {
            f"{metric}@{k}": spread(per_seed(results, "all", metric, k)[model].dropna())
            for metric, k in (("recall", 10), ("ndcg", 10), ("recall", 20), ("ndcg", 20))
        }
    rows["RecBole 1.2.1 LightGCN, reported"] = {name: f"{value:.4f}" for name, value in RECBOLE_LIGHTGCN.items()}
    return pd.DataFrame(rows).T


def report(by_protocol: dict[str, pd.DataFrame]) -> str:
    lines = []
    for protocol, results in by_protocol.items():
        seeds = sorted(int(seed) for seed in results.seed.unique())
        title = "temporal split (global 80/10/10 time cut)" if protocol == "temporal" else "random 8:1:1 per user"
        lines += [f"### MovieLens-100K, {title}: mean ± std over seeds {seeds}", ""]
        for metric, k in METRICS:
            lines += [f"{metric.upper()}@{k} per segment:", "", model_table(results, metric, k).to_markdown(), ""]
        lines += [f"Best single model by mean NDCG@20: {best_single(results)}.", ""]
        for segment in ("all", "warm_users"):
            ratios = ratio_table(results, segment)
            if not ratios.empty:
                lines += [f"Ratios per seed on {segment}, NDCG@20:", "", ratios.to_markdown(), ""]
        if protocol == "random" and LIGHTGCN in set(results.model):
            lines += ["Against RecBole's LightGCN:", "", recbole_table(results).to_markdown(), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rerun", action="store_true", help="materialize again even when a seed's results exist")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    args = parser.parse_args()
    home = HomeLayout.current()
    root = home.results
    by_protocol = {
        protocol: pd.concat(
            [collect(Run(protocol, seed), root, home.data_cache, args.rerun) for seed in args.seeds], ignore_index=True
        )
        for protocol in args.protocols
    }
    text = report(by_protocol)
    (root / "results.md").write_text(text + "\n")
    print(text)
    print(f"(also written to {root / 'results.md'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
