"""SASRec on an interaction graph: each user's recent items in, next-item embeddings out.

Which events each stage reads (a user's sequence: its last events in time order):

- training batches: every next-item step of the users' TRAIN sequences once, in windows of
  max_len steps (a user's newest window is its last max_len + 1 events shifted by one, as the
  paper trains; older windows add the steps before); a fresh uniform negative per position
  each epoch, among the items the user has no TRAIN event with;
- validation (early stopping on NDCG@20 with the shared evaluator): users from their TRAIN
  sequences, at the validation cut;
- the final embeddings, which the test split is ranked with: users from their TRAIN + VALID
  sequences. By the test period the valid events have happened; a user first met in the valid
  period gets a vector from those events alone.

TEST events are never read. Item vectors are the item table, the same at both cuts.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from grec_dagster.evaluation.evaluator import ranking_task, validation_ndcg
from grec_dagster.evaluation.segments import item_segments
from grec_dagster.graph.interactions import TEST, TRAIN, VALID, InteractionGraph, known_before
from grec_dagster.layout import SASREC
from grec_dagster.models.sasrec import SASRec, SASRecParams, next_item_windows, recent_items
from grec_dagster.training.bpr import BPRSampler
from grec_dagster.training.embeddings import TrainedEmbeddings
from grec_dagster.training.loop import DEFAULT_CONTEXT, TrainingContext, TrainParams, fit


class SASRecObjective:
    """Windows of TRAIN next-item steps with one negative per position; validation NDCG@20 at the
    validation cut."""

    def __init__(self, graph: InteractionGraph, max_len: int, batch_size: int):
        self.row_users, self.inputs, self.targets = next_item_windows(graph, (TRAIN,), max_len)
        self.sampler = BPRSampler(graph.pairs(TRAIN), graph.n_items, batch_size)
        self.batch_size = batch_size
        self.valid_tokens = recent_items(graph, known_before(VALID), max_len)
        self.valid_task = ranking_task(graph, VALID)
        self.segments = item_segments(graph)

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[Tensor, ...]]:
        order = torch.randperm(len(self.row_users), generator=generator)
        per_position = self.row_users.unsqueeze(1).expand_as(self.targets).contiguous()
        negatives = self.sampler.negatives(per_position, generator) + 1  # item -> token
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield self.inputs[rows], self.targets[rows], negatives[rows]

    def validate(self, model: nn.Module) -> dict[str, float]:
        users, items = model.user_vectors(self.valid_tokens), model.item_vectors()
        return validation_ndcg(lambda batch: users[batch] @ items.T, self.valid_task, self.segments)


class SASRecTraining(TrainParams):
    """The paper's Adam step and batch. MovieLens-100K validation NDCG@20, seed 0, temporal / random
    8:1:1 split: these defaults 0.148 / 0.182; dropout 0.5 0.144 / 0.186. With the paper's newest
    window alone: 0.144 / 0.181, and from there dropout 0.5 0.146 / 0.188, max_len 100 - / 0.181,
    max_len 200 0.143 / - (10x slower), lr 2e-3 - / 0.175. None is clear of one seed's noise."""

    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 200
    patience: int = 20


def train_sasrec(
    graph: InteractionGraph,
    params: SASRecParams,
    train: TrainParams,
    context: TrainingContext = DEFAULT_CONTEXT,
) -> TrainedEmbeddings:
    """Fit on TRAIN sequences, early-stop on VALID, then embed users from their TRAIN + VALID sequences."""
    torch.manual_seed(train.seed)
    model = SASRec(graph.n_items, params)
    objective = SASRecObjective(graph, params.max_len, train.batch_size)
    result = fit(model, objective, train, context, description=SASREC)
    model.load_state_dict(result.best_state)
    model.eval()
    items = model.item_vectors()
    users = model.user_vectors(recent_items(graph, known_before(TEST), params.max_len))
    valid_users = model.user_vectors(objective.valid_tokens)
    # safetensors refuses shared storage, hence the clone
    return TrainedEmbeddings(users, items, result, valid_users, items.clone())
