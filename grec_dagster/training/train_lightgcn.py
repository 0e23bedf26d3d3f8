"""LightGCN on an interaction graph: BPR batches in, embeddings and a checkpoint out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from grec_dagster.evaluation.evaluator import ranking_task, validation_ndcg
from grec_dagster.graph.adjacency import normalized_adjacency
from grec_dagster.graph.interactions import TRAIN, VALID, InteractionGraph
from grec_dagster.models.lightgcn import LightGCN, LightGCNParams
from grec_dagster.training.bpr import BPRSampler
from grec_dagster.training.checkpoints import save_tensors
from grec_dagster.training.loop import EpochCallback, TrainParams, TrainResult, fit


class _BPRForward(nn.Module):
    """Routes `forward(users, pos, neg)` to the BPR loss, so DDP sees each step."""

    def __init__(self, model: LightGCN):
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return self.model.bpr_loss(users, positives, negatives)


class LightGCNObjective:
    def __init__(self, graph: InteractionGraph, batch_size: int):
        self.sampler = BPRSampler(graph.pairs(TRAIN), graph.n_items, batch_size)
        self.valid_task = ranking_task(graph, VALID)

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        return self.sampler.epoch(generator)

    def validate(self, model: nn.Module) -> dict[str, float]:
        users, items = model.model.final_embeddings()
        return {"ndcg@20": validation_ndcg(lambda batch: users[batch] @ items.T, self.valid_task)}


@dataclass
class TrainedEmbeddings:
    """What a trained collaborative model leaves: final embeddings and its training record."""

    user_embedding: torch.Tensor
    item_embedding: torch.Tensor
    result: TrainResult

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embedding[users] @ self.item_embedding.T


def build_lightgcn(graph: InteractionGraph, params: LightGCNParams) -> LightGCN:
    pairs = graph.pairs(TRAIN)
    adjacency = normalized_adjacency(pairs // graph.n_items, pairs % graph.n_items, graph.n_users, graph.n_items)
    return LightGCN(graph.n_users, graph.n_items, params, adjacency)


def train_lightgcn(
    graph: InteractionGraph,
    params: LightGCNParams,
    train: TrainParams,
    checkpoint_dir: Path | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainedEmbeddings:
    torch.manual_seed(train.seed)
    model = build_lightgcn(graph, params)
    result = fit(
        _BPRForward(model),
        LightGCNObjective(graph, train.batch_size),
        train,
        checkpoint_dir=checkpoint_dir,
        on_epoch=on_epoch,
        description="lightgcn",
    )
    model.load_state_dict({k.removeprefix("model."): v for k, v in result.best_state.items()})
    users, items = model.final_embeddings()
    return TrainedEmbeddings(users, items, result)


def save_embeddings(path: Path, trained: TrainedEmbeddings, config: dict) -> None:
    """The checkpoint downstream stages read: final embeddings plus the config that made them."""
    tensors = {"user_embedding": trained.user_embedding, "item_embedding": trained.item_embedding}
    meta = config | {"best_epoch": trained.result.best_epoch, "best_valid_ndcg@20": trained.result.best_metric}
    save_tensors(path, tensors, meta)
