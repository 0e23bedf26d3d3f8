"""EASE on an interaction graph: lambda chosen on validation, B refitted at the test cut.

Which pairs each cut reads (X: the binary matrix of distinct pairs):

- the validation cut: B fitted on TRAIN pairs for every lambda of the grid, each ranked on VALID
  with the shared evaluator; the best lambda (validation NDCG@20) is kept;
- the test cut: B refitted on TRAIN + VALID pairs with that lambda, and every user's TRAIN +
  VALID row folded in. EASE has no state but B, so refitting is the like-for-like way to let it
  know the valid period, as the other towers' test-cut embeddings do.

TEST pairs are never read. The scores are returned as embeddings: a user is its row of X and an
item its row of B^T, so user @ item.T = X B; a user without a known pair has a zero row, a
constant score. There are no epochs: `result.history` has one record per lambda of the grid
(`epoch` is its index, `train_loss` the mean squared reconstruction error per user), so
whatever reads training histories reads these too.
"""

from __future__ import annotations

import time

import torch

from grec_dagster.evaluation.evaluator import ranking_task, validation_ndcg
from grec_dagster.evaluation.metrics import RankingTask
from grec_dagster.evaluation.segments import item_segments
from grec_dagster.graph.interactions import TRAIN, VALID, InteractionGraph
from grec_dagster.models.ease import EASEParams, binary_matrix, check_catalog, ease_weights, gram
from grec_dagster.training.embeddings import TrainedEmbeddings
from grec_dagster.training.loop import DEFAULT_CONTEXT, TrainingContext, TrainResult
from grec_dagster.training.watch import CLOSED_FORM


def train_ease(
    graph: InteractionGraph, params: EASEParams, context: TrainingContext = DEFAULT_CONTEXT
) -> TrainedEmbeddings:
    """Grid-search lambda on VALID, then refit on TRAIN + VALID. Of `context` only `on_epoch` is
    used (once per lambda): a closed form has nothing to resume and solves on the CPU."""
    check_catalog(graph.n_items)
    task, segments = ranking_task(graph, VALID), item_segments(graph)
    valid_users = binary_matrix(graph.pairs(TRAIN), graph.n_users, graph.n_items)
    valid_gram = gram(valid_users)
    history: list[dict[str, float]] = []
    best, best_metric, best_items = 0, float("-inf"), torch.empty(0)
    for index, reg in enumerate(params.lambdas):
        started = time.perf_counter()
        items = ease_weights(valid_gram, reg).T.float().contiguous()
        record = {"epoch": float(index), "lambda": reg} | _grid_record(valid_users, items, task, segments)
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        if context.on_epoch is not None:
            context.on_epoch(record)
        if record["ndcg@20"] > best_metric:
            best, best_metric, best_items = index, record["ndcg@20"], items
    users = binary_matrix(graph.pairs(TRAIN, VALID), graph.n_users, graph.n_items)
    items = ease_weights(gram(users), params.lambdas[best]).T.float().contiguous()
    result = TrainResult(history, best, best_metric, best_state={}, watch=CLOSED_FORM)
    return TrainedEmbeddings(users, items, result, valid_users, best_items)


def _grid_record(
    users: torch.Tensor, items: torch.Tensor, task: RankingTask, segments: dict[str, torch.Tensor]
) -> dict[str, float]:
    """The mean squared reconstruction error per user, and validation NDCG@20 overall and per segment."""
    residual = users - users @ items.T
    record = {"train_loss": float(residual.pow(2).sum()) / len(users)}
    return record | validation_ndcg(lambda batch: users[batch] @ items.T, task, segments)
