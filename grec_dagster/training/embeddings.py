"""Shared by the dot-product models trained on BPR triples (LightGCN, GraphSAGE): their
objective for `fit`, and what their training leaves behind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from grec_dagster.evaluation.evaluator import ranking_task, validation_ndcg
from grec_dagster.evaluation.segments import item_segments
from grec_dagster.graph.interactions import TRAIN, VALID, InteractionGraph
from grec_dagster.storage import save_tensors
from grec_dagster.training.bpr import BPRSampler
from grec_dagster.training.loop import TrainResult

EmbedFn = Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor]]
"""The (user, item) embeddings of the module `fit` trains, as validation ranks with them."""


class BPRObjective:
    """Batches of BPR triples over the training pairs; validation NDCG@20 of the dot-product scores,
    overall and per item segment."""

    def __init__(self, graph: InteractionGraph, batch_size: int, embed: EmbedFn, n_negatives: int = 1):
        self.sampler = BPRSampler(graph.pairs(TRAIN), graph.n_items, batch_size, n_negatives)
        self.valid_task = ranking_task(graph, VALID)
        self.segments = item_segments(graph)
        self.embed = embed

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        return self.sampler.epoch(generator)

    def validate(self, model: nn.Module) -> dict[str, float]:
        users, items = self.embed(model)
        return validation_ndcg(lambda batch: users[batch] @ items.T, self.valid_task, self.segments)


@dataclass
class TrainedEmbeddings:
    """Final user and item embeddings (score = dot product) and the training record.

    The final embeddings are taken at the test cut. A model that reads events after training
    (GraphSAGE's and the temporal model's valid-period neighbors) also gives the embeddings it
    had at the validation cut, so a later stage fitted on validation events (fusion) sees the
    tower as it was then; None means the two are the same. `weights` are model tensors the
    checkpoint keeps as well, when the embeddings alone cannot be recomputed from it (the text
    tower's heads and LoRA adapters, which encode items it has never seen).
    """

    user_embedding: torch.Tensor
    item_embedding: torch.Tensor
    result: TrainResult
    valid_user_embedding: torch.Tensor | None = None
    valid_item_embedding: torch.Tensor | None = None
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embedding[users] @ self.item_embedding.T


def save_embeddings(path: Path, trained: TrainedEmbeddings, config: dict) -> None:
    """The checkpoint downstream stages read: final embeddings plus the config that made them,
    and the model's `weights` under `weights.`."""
    tensors = {"user_embedding": trained.user_embedding, "item_embedding": trained.item_embedding}
    if trained.valid_user_embedding is not None and trained.valid_item_embedding is not None:
        tensors["valid_user_embedding"] = trained.valid_user_embedding
        tensors["valid_item_embedding"] = trained.valid_item_embedding
    tensors |= {f"weights.{name}": tensor for name, tensor in trained.weights.items()}
    meta = config | {"best_epoch": trained.result.best_epoch, "best_valid_ndcg@20": trained.result.best_metric}
    save_tensors(path, tensors, meta)
