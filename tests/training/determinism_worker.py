"""One small training config of every model, in a process of its own, at the default thread count.

    python determinism_worker.py OUT --models lightgcn graphsage ... [--checkpoint-root DIR]

For each model it writes OUT/<model>.json: digests of every tensor the model's checkpoint would
hold, the epoch record without wall-clock seconds, and the test metrics of the one evaluator. Two
processes given the same arguments must write the same files (tests/training/test_determinism.py);
with `--checkpoint-root`, each model keeps its resumable state in DIR/<model>, so a process killed
mid-training and started again must write them too.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
from grec_dagster.evaluation.evaluator import evaluate
from grec_dagster.evaluation.tables import headline_table
from grec_dagster.graph.features import item_features, user_features
from grec_dagster.graph.interactions import TEST, VALID, InteractionGraph, build_graph
from grec_dagster.graph.splits import split_labels
from grec_dagster.graph.temporal import TemporalGraph, build_temporal_graph
from grec_dagster.layout import EASE, GRAPHSAGE, LIGHTGCN, SASREC, TEMPORAL, TEMPORAL_PROFILES, TEXT_TOWER
from grec_dagster.models.ease import EASEParams
from grec_dagster.models.graphsage import GraphSAGEParams
from grec_dagster.models.lightgcn import LightGCNParams
from grec_dagster.models.profile_fusion import ProfileFacets
from grec_dagster.models.sasrec import SASRecParams
from grec_dagster.models.temporal import TemporalParams
from grec_dagster.models.text_tower import TextTowerParams
from grec_dagster.models.towers import tower_inputs
from grec_dagster.storage import tensor_fingerprint
from grec_dagster.training.embeddings import TrainedEmbeddings, save_embeddings
from grec_dagster.training.loop import TrainingContext, TrainParams, TrainResult
from grec_dagster.training.train_ease import train_ease
from grec_dagster.training.train_fusion import FusionParams, fusion_scores, train_fusion
from grec_dagster.training.train_graphsage import train_graphsage
from grec_dagster.training.train_lightgcn import train_lightgcn
from grec_dagster.training.train_sasrec import train_sasrec
from grec_dagster.training.train_temporal import train_temporal
from grec_dagster.training.train_text_tower import train_text_tower

FUSION = "fusion"
MODELS = (LIGHTGCN, GRAPHSAGE, TEMPORAL, TEMPORAL_PROFILES, EASE, SASREC, TEXT_TOWER, FUSION)
CLOSED_FORM = (EASE,)
"""Solved, not trained: no epochs to resume from."""
TRAIN = TrainParams(epochs=8, lr=5e-3, batch_size=256, patience=8)
"""Eight epochs, no early stop: long enough to kill a run in the middle, a few seconds a model."""


class Shop:
    """A small synthetic shop, its temporal split and features: the same in every process."""

    def __init__(self) -> None:
        frames = generate_synthetic(SyntheticConfig(n_interactions=3000, n_days=40, seed=3))
        log = frames.interactions
        self.graph = build_graph(log, split_labels(log, "temporal"), "temporal")
        self.user_x = user_features(frames.users, self.graph.user_ids)
        self.item_x = item_features(frames.items, self.graph.item_ids)
        self.temporal: TemporalGraph = build_temporal_graph(self.graph, self.user_x, self.item_x)
        seeded = torch.Generator().manual_seed(7)
        self.profiles = ProfileFacets(
            torch.randn(self.graph.n_users, 5, 24, generator=seeded),
            torch.rand(self.graph.n_users, generator=seeded) > 0.3,
        )
        self.item_text = F.normalize(torch.randn(self.graph.n_items, 32, generator=seeded), dim=1)


def embedding_trainers(
    shop: Shop, train: TrainParams = TRAIN
) -> dict[str, Callable[[TrainingContext], TrainedEmbeddings]]:
    graph = shop.graph
    temporal = TemporalParams(dim=16, neighbors=5)
    return {
        LIGHTGCN: lambda run: train_lightgcn(graph, LightGCNParams(dim=16), train, run),
        GRAPHSAGE: lambda run: train_graphsage(graph, shop.user_x, shop.item_x, GraphSAGEParams(dim=16), train, run),
        TEMPORAL: lambda run: train_temporal(graph, shop.temporal, temporal, train, run),
        TEMPORAL_PROFILES: lambda run: train_temporal(graph, shop.temporal, temporal, train, run, shop.profiles),
        EASE: lambda run: train_ease(graph, EASEParams(), run),
        SASREC: lambda run: train_sasrec(graph, SASRecParams(dim=16, blocks=1, max_len=20), train, run),
        TEXT_TOWER: lambda run: train_text_tower(
            graph, shop.item_text, None, TextTowerParams(dim=16, hidden=32), train, run
        ),
    }


def record(result: TrainResult, tensors: dict[str, torch.Tensor], test: dict[str, float]) -> dict:
    return {
        "tensors": {name: tensor_fingerprint(tensor) for name, tensor in sorted(tensors.items())},
        "history": [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in result.history],
        "best_epoch": result.best_epoch,
        "test": test,
    }


def test_metrics(graph: InteractionGraph, score, model: str) -> dict[str, float]:
    return headline_table(evaluate(score, graph, model, TEST)).drop(columns=["model"]).iloc[0].to_dict()


def run_embeddings(shop: Shop, name: str, context: TrainingContext) -> dict:
    trained = embedding_trainers(shop)[name](context)
    tensors = {"user_embedding": trained.user_embedding, "item_embedding": trained.item_embedding}
    if trained.valid_user_embedding is not None:
        tensors |= {
            "valid_user_embedding": trained.valid_user_embedding,
            "valid_item_embedding": trained.valid_item_embedding,
        }
    return record(trained.result, tensors, test_metrics(shop.graph, trained.score, name))


def run_fusion(shop: Shop, context: TrainingContext, scratch: Path, train: TrainParams = TRAIN) -> dict:
    """Static and gated fusion of popularity and a LightGCN trained here (its checkpoint in `scratch`);
    `train` is the fusion's training (the LightGCN's is always TRAIN)."""
    graph = shop.graph
    checkpoint = scratch / "lightgcn_for_fusion.safetensors"
    save_embeddings(checkpoint, embedding_trainers(shop)[LIGHTGCN](TrainingContext()), {})
    towers = {LIGHTGCN: checkpoint}
    trained = train_fusion(
        graph, tower_inputs(graph, towers, VALID, popularity=True), FusionParams(hidden=8), train, [], context
    )
    at_test = tower_inputs(graph, towers, TEST, popularity=True)
    test = {
        f"{kind}/{metric}": value
        for kind, fusion in (("static", trained.static), ("gated", trained.gated))
        for metric, value in test_metrics(graph, fusion_scores(fusion, at_test), kind).items()
    }
    tensors = dict(trained.gated.state_dict()) | {"static_weights": trained.static.weights}
    return record(trained.result, tensors, test)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--checkpoint-root", type=Path)
    args = parser.parse_args()
    shop = Shop()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        state = args.checkpoint_root / name if args.checkpoint_root else None
        context = TrainingContext(checkpoint_dir=state)
        found = run_fusion(shop, context, args.out) if name == FUSION else run_embeddings(shop, name, context)
        (args.out / f"{name}.json").write_text(json.dumps(found, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
