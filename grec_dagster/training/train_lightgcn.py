"""LightGCN on an interaction graph: BPR batches in, embeddings and a checkpoint out."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from grec_dagster.graph.adjacency import normalized_adjacency
from grec_dagster.graph.interactions import TRAIN, InteractionGraph
from grec_dagster.models.lightgcn import LightGCN, LightGCNParams
from grec_dagster.training.embeddings import BPRObjective, TrainedEmbeddings
from grec_dagster.training.loop import EpochCallback, TrainParams, fit


class _BPRForward(nn.Module):
    """Routes `forward(users, pos, neg)` to the BPR loss, so DDP sees each step."""

    def __init__(self, model: LightGCN):
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return self.model.bpr_loss(users, positives, negatives)


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
    accelerator: Accelerator | None = None,
) -> TrainedEmbeddings:
    torch.manual_seed(train.seed)
    model = build_lightgcn(graph, params)
    result = fit(
        _BPRForward(model),
        BPRObjective(graph, train.batch_size, lambda module: module.model.final_embeddings(), params.negatives),
        train,
        checkpoint_dir=checkpoint_dir,
        on_epoch=on_epoch,
        accelerator=accelerator,
        description="lightgcn",
    )
    model.load_state_dict({k.removeprefix("model."): v for k, v in result.best_state.items()})
    users, items = model.final_embeddings()
    return TrainedEmbeddings(users, items, result)
