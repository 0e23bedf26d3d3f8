"""Where grec keeps everything, and which towers it has: the one owner of both. Pure paths and
names (no I/O but `grec_home`'s read of the environment), so every layer may ask it.

    $GREC_HOME/                       default ./.grec; each part can be moved by GREC_CONFIG
      warehouse.duckdb                every table
      mlflow.db  mlartifacts/         the embedded MLflow store
      dagster/                        the Dagster instance (DAGSTER_HOME)
      data/                           downloaded datasets (MovieLens-100K)
      serving/recommend_index.npz     what `grec recommend` answers from
      logs/                           the logs of the services `grec ui` starts
      checkpoints/                    one folder per asset:
        interaction_graph/            edges.safetensors, user_ids.parquet, item_ids.parquet, graph.json
        temporal_graph/               temporal_graph.safetensors
        item_text_embeddings/         item_text.safetensors
        profile_embeddings/           profile_embeddings.safetensors
        popularity_baselines/         scores.safetensors
        <tower>/  fusion/             model.safetensors, config.json, grokking.json; state-<key>/ while training
        fusion/                       + recommendations.parquet and the plots
        reports/                      evaluation reports, MLflow comparisons

Towers are what fusion combines and `grec recommend` serves. Each has a name (its checkpoint
folder, its MLflow run and its row in every report), the asset that trains it, and a scorer
that says how its checkpoint turns into scores (`models/towers.py` implements them).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

GRAPH_FILES = ("edges.safetensors", "user_ids.parquet", "item_ids.parquet", "graph.json")
"""The interaction graph's files, in its folder (`InteractionGraph.save` writes them)."""


def grec_home() -> Path:
    return Path(os.environ.get("GREC_HOME", ".grec")).expanduser().resolve()


@dataclass(frozen=True)
class HomeLayout:
    """The embedded defaults under one GREC_HOME."""

    home: Path

    @classmethod
    def current(cls) -> HomeLayout:
        return cls(grec_home())

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> str:
        return (self.home / "mlartifacts").as_uri()

    @property
    def checkpoints(self) -> Path:
        return self.home / "checkpoints"

    @property
    def data_cache(self) -> Path:
        return self.home / "data"

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME", self.home / "dagster"))

    @property
    def serving_index(self) -> Path:
        return self.home / "serving" / "recommend_index.npz"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def results(self) -> Path:
        """Where `make results` keeps one GREC_HOME per run."""
        return self.home / "results"


@dataclass(frozen=True)
class ModelFiles:
    """The files of one trained model (a tower or the fusion) in its own folder."""

    folder: Path

    @property
    def checkpoint(self) -> Path:
        return self.folder / "model.safetensors"

    @property
    def config(self) -> Path:
        return self.folder / "config.json"

    @property
    def grokking(self) -> Path:
        return self.folder / "grokking.json"

    def resume_state(self, data_fingerprint: str, config_json: str) -> Path:
        """Where an interrupted training run left its state: keyed by data and config, so only the
        very same run resumes from it (a changed config or graph starts fresh)."""
        digest = hashlib.sha256(f"{data_fingerprint}:{config_json}".encode()).hexdigest()[:16]
        return self.folder / f"state-{digest}"

    def plot(self, name: str) -> Path:
        return self.folder / f"{name}.png"


@dataclass(frozen=True)
class CheckpointLayout:
    """The files under the checkpoint root, one folder per asset."""

    root: Path

    @property
    def interaction_graph(self) -> Path:
        """A folder: `GRAPH_FILES`."""
        return self.root / "interaction_graph"

    @property
    def temporal_graph(self) -> Path:
        return self.root / "temporal_graph" / "temporal_graph.safetensors"

    @property
    def item_text_embeddings(self) -> Path:
        return self.root / "item_text_embeddings" / "item_text.safetensors"

    @property
    def profile_embeddings(self) -> Path:
        return self.root / "profile_embeddings" / "profile_embeddings.safetensors"

    @property
    def popularity_scores(self) -> Path:
        return self.root / "popularity_baselines" / "scores.safetensors"

    def model(self, name: str) -> ModelFiles:
        """The files of a tower with a checkpoint (`Scorer.EMBEDDINGS`), or the fusion's (`FUSION`)."""
        trained = [spec.name for spec in TOWERS.values() if spec.scorer == Scorer.EMBEDDINGS]
        if name not in trained and name != FUSION:
            raise KeyError(f"no trained model {name!r}: towers with checkpoints are {', '.join(trained)}, and {FUSION}")
        return ModelFiles(self.root / name)

    @property
    def recommendations(self) -> Path:
        return self.root / FUSION / "recommendations.parquet"

    def report(self, name: str) -> Path:
        return self.root / "reports" / name


class Scorer(StrEnum):
    """How a tower's checkpoint turns into scores r(u, i)."""

    EMBEDDINGS = "embeddings"
    """<user_embedding[u], item_embedding[i]> from the tower's `model.safetensors`."""
    RECENT_POPULARITY = "recent_popularity"
    """Events per item in the recent share of the events known at the cut: the same for every user."""


@dataclass(frozen=True)
class TowerSpec:
    name: str
    asset: str
    """The Dagster asset that trains it."""
    scorer: Scorer
    reads: str
    """What it learns from and what it knows at the test cut, as the evaluation report states it."""


POPULARITY = "popularity"
LIGHTGCN = "lightgcn"
GRAPHSAGE = "graphsage"
TEMPORAL = "temporal"
TEMPORAL_PROFILES = "temporal_profiles"
TEXT_TOWER = "text_tower"
EASE = "ease"
SASREC = "sasrec"
FUSION = "fusion"
"""The fusion's checkpoint folder and MLflow run name."""
FUSION_ASSET = f"{FUSION}_checkpoint"
STATIC_FUSION, GATED_FUSION = "static_fusion", "gated_fusion"
"""The fusion's two models in every report."""
MOST_POPULAR, MOST_POPULAR_RECENT = "most_popular", "most_popular_recent"
"""The popularity baselines in every report (their scores in `popularity_scores`)."""

TOWERS: dict[str, TowerSpec] = {
    spec.name: spec
    for spec in (
        TowerSpec(
            POPULARITY,
            "popularity_baselines",
            Scorer.RECENT_POPULARITY,
            "counts train + valid events (its last 10% of time weighted up); no training",
        ),
        TowerSpec(
            LIGHTGCN,
            f"{LIGHTGCN}_checkpoint",
            Scorer.EMBEDDINGS,
            "trained on train pairs; at test propagates over train + valid pairs (fold-in)",
        ),
        TowerSpec(
            GRAPHSAGE,
            f"{GRAPHSAGE}_checkpoint",
            Scorer.EMBEDDINGS,
            "trained on train pairs; at test embeds every node over the train + valid graph and its features",
        ),
        TowerSpec(
            TEMPORAL,
            f"{TEMPORAL}_checkpoint",
            Scorer.EMBEDDINGS,
            "trained on the train stream; at test replays train + valid events into memory and neighbours",
        ),
        TowerSpec(
            TEMPORAL_PROFILES,
            f"{TEMPORAL_PROFILES}_checkpoint",
            Scorer.EMBEDDINGS,
            "as temporal, plus LLM profiles written from train events before the profile cut",
        ),
        TowerSpec(
            EASE,
            f"{EASE}_checkpoint",
            Scorer.EMBEDDINGS,
            "lambda chosen on train -> valid; at test refit on train + valid pairs, users their train + valid rows",
        ),
        TowerSpec(
            SASREC,
            f"{SASREC}_checkpoint",
            Scorer.EMBEDDINGS,
            "trained on train sequences; at test each user is the last step over their train + valid sequence",
        ),
        TowerSpec(
            TEXT_TOWER,
            f"{TEXT_TOWER}_checkpoint",
            Scorer.EMBEDDINGS,
            "trained on train pairs; at test users are the texts of their train + valid items (and profile)",
        ),
    )
}
"""Every tower, in the order reports list them."""

SERVABLE = (GATED_FUSION, *TOWERS)
"""What `grec recommend --model` serves: the gated fusion the pipeline learned (the default), or one tower."""

FUSED_BY_DEFAULT = (POPULARITY, LIGHTGCN, GRAPHSAGE, TEMPORAL, EASE, SASREC, TEXT_TOWER)
"""The towers `fusion_checkpoint` fuses unless configured otherwise."""

MODEL_READS: dict[str, str] = {
    MOST_POPULAR: "counts every event before the test cut (train + valid); no training",
    MOST_POPULAR_RECENT: "counts train + valid events in the last 10% of the time before the test cut",
    **{name: spec.reads for name, spec in TOWERS.items()},
    STATIC_FUSION: "weights tuned on validation events, towers at the validation cut; at test, towers at the test cut",
    GATED_FUSION: "gates fit on validation events, towers at the validation cut; at test, towers at the test cut",
}
"""What each model of a report saw: the evaluation report prints it beside the numbers."""
