"""GraphSAGE on an interaction graph: BPR triples as sampled subgraphs in, embeddings out.

Which edges carry messages, and when (an edge is a distinct user-item pair, both directions):

- training batches and validation (early stopping): TRAIN pairs only, since validation
  ranks the VALID pairs;
- the final embeddings, which the test split is ranked with: TRAIN + VALID pairs. By the
  test period the valid events have happened, and the evaluator removes them from the
  ranking as history; a user or item first met in the valid period is thus embedded from
  its valid-period neighbors and its features.

TEST pairs never carry a message, and id embeddings exist only for nodes with a TRAIN edge
(the model's `has_id`), so nothing of the test period reaches an embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grec_dagster.graph.csr import CSR
from grec_dagster.graph.interactions import TRAIN, VALID, InteractionGraph
from grec_dagster.layout import GRAPHSAGE
from grec_dagster.models.graphsage import GraphSAGE, GraphSAGEParams
from grec_dagster.training.embeddings import BPRObjective, TrainedEmbeddings
from grec_dagster.training.loop import DEFAULT_CONTEXT, StepCappedTraining, TrainingContext, TrainParams, fit


def interaction_csr(graph: InteractionGraph, *splits: int) -> CSR:
    """The distinct pairs of `splits` as an undirected CSR over users, then items (offset by n_users)."""
    pairs = graph.pairs(*splits)
    users, items = pairs // graph.n_items, pairs % graph.n_items + graph.n_users
    return CSR.from_edges(torch.cat([users, items]), torch.cat([items, users]), graph.n_users + graph.n_items)


class GraphSAGETraining(StepCappedTraining):
    """No step cap by default: a step costs what its batch's two-hop neighbour sample costs, and on a
    large graph a batch several times larger samples only a few times more nodes (a batch of 2,048
    pairs samples 100K of the 10M log's 319K nodes), so `max_steps` would shorten a long log's epoch
    several times over; but on MovieLens-100K, 5 times fewer, larger steps lost 4-5% of the test
    NDCG@20, a loss larger than the seed spread, at the default and at a sqrt-scaled learning rate
    (`benchmarks/batch_quality.py`). Set it where epoch time matters more."""

    lr: float = 2e-3


def pairs_per_batch(graph: InteractionGraph, train: GraphSAGETraining) -> int:
    """BPR pairs per batch of `train_graphsage` on `graph`: its distinct TRAIN pairs, capped at `max_steps` steps."""
    return train.examples_per_batch(len(graph.pairs(TRAIN)))


def train_graphsage(
    graph: InteractionGraph,
    user_features: Tensor,
    item_features: Tensor,
    params: GraphSAGEParams,
    train: TrainParams,
    context: TrainingContext = DEFAULT_CONTEXT,
) -> TrainedEmbeddings:
    """Fit on TRAIN, early-stop on VALID, then embed every node over the TRAIN + VALID graph."""
    train = GraphSAGETraining.model_validate(train.model_dump())  # plain TrainParams get the (unset) max_steps
    torch.manual_seed(train.seed)
    train_graph = interaction_csr(graph, TRAIN)
    model = GraphSAGE(user_features, item_features, train_graph, params)
    batch_size = pairs_per_batch(graph, train)
    objective = BPRObjective(graph, batch_size, lambda module: module.embed_all(train_graph), params.negatives)
    result = fit(model, objective, train, context, description=GRAPHSAGE)
    model.load_state_dict(result.best_state)
    model.eval()
    users, items = model.embed_all(interaction_csr(graph, TRAIN, VALID))
    valid_users, valid_items = model.embed_all(train_graph)
    return TrainedEmbeddings(users, items, result, valid_users, valid_items)
