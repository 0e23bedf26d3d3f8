"""The temporal graph attention model through the shared loop, and its test readouts.

Batches are the training events in time order, cut where the time changes, each event with
one sampled negative item (BPR, drawn batch by batch from the seeded generator); every epoch replays the stream from an empty memory, as TGN
does. Validation embeds every user and item at the validation cut from the training events
and ranks all items through the shared evaluator; the final embeddings are taken at the test
cut from train + valid events, so `evaluate` scores them like any other model's.

With memory on, train in one process: under DDP the loop gives each process its own rows of
every batch, so each process's memory would see only its share of the stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from pydantic import Field
from torch import Tensor, nn

from grec_dagster.evaluation.evaluator import ranking_task, validation_ndcg
from grec_dagster.evaluation.segments import item_segments
from grec_dagster.graph.interactions import TEST, TRAIN, VALID, InteractionGraph
from grec_dagster.graph.temporal import ITEM, USER, TemporalGraph, chronological_batches
from grec_dagster.models.profile_fusion import ProfileFacets
from grec_dagster.models.temporal import TemporalGraphAttention, TemporalParams
from grec_dagster.training.bpr import BPRSampler
from grec_dagster.training.embeddings import TrainedEmbeddings
from grec_dagster.training.loop import DEFAULT_CONTEXT, StepCappedTraining, TrainingContext, TrainParams, fit


class TemporalObjective:
    def __init__(
        self,
        model: TemporalGraphAttention,
        graph: InteractionGraph,
        temporal: TemporalGraph,
        batch_size: int,
    ):
        self.model = model
        self.history = temporal.history_before(VALID)
        model.train_on(self.history)
        self.batch_size = batch_size
        self.sampler = BPRSampler(graph.pairs(TRAIN), graph.n_items, batch_size)
        self.valid_task = ranking_task(graph, VALID)
        self.segments = item_segments(graph)
        self.valid_time = temporal.cut_time(VALID)

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[Tensor, ...]]:
        events = self.history
        self.model.reset_memory()
        for start, end in chronological_batches(events.ts, self.batch_size):
            users = events.users[start:end]
            yield users, events.items[start:end], events.ts[start:end], self.sampler.negatives(users, generator)

    def validate(self, model: nn.Module) -> dict[str, float]:
        users, items = model.embeddings_at(self.history, self.valid_time, self.batch_size)
        return validation_ndcg(lambda batch: users[batch] @ items.T, self.valid_task, self.segments)


@torch.no_grad()
def next_interaction_mrr(model: TemporalGraphAttention, temporal: TemporalGraph, split: int, batch_size: int) -> float:
    """Mean reciprocal rank of each `split` event's item among all items, just before the event.

    The whole stream is replayed in chronological batches. Each user is embedded at its own
    event's time and every item at its batch's first time, both from all events strictly
    before (earlier held-out events included: in a stream they are known by then), with the
    memory of every earlier batch. The approximation: an item misses events of its own batch.
    Ties count against the model.
    """
    reciprocal = []
    for start, end, memory in model.stream(temporal, batch_size):
        chosen = torch.nonzero(temporal.split[start:end] == split).squeeze(1) + start
        if not chosen.numel():
            continue
        items = model.embed_all(temporal, ITEM, int(temporal.ts[start]), memory)
        users = model.embed(temporal, temporal.users[chosen], USER, temporal.ts[chosen], memory)
        scores = users @ items.T
        target = scores.gather(1, temporal.items[chosen].unsqueeze(1))
        reciprocal.append(1.0 / (scores >= target).sum(1).float())
    return float(torch.cat(reciprocal).mean()) if reciprocal else float("nan")


class TemporalTraining(StepCappedTraining):
    """Why a cap on steps: the memory forces the stream's batches to run one after another, and on a
    CPU a small batch's step costs mostly fixed per-operation overhead, so at TGN's 200 events an
    epoch of 8M events was 40,000 sequential steps (29 minutes on 2 cores). Larger batches make the
    memory staler, since a node's second event in a batch reads memory from before the first, but
    on a long log of many nodes a node recurs within a batch less often: the 10M synthetic log's
    batches of 8,000 events repeat a node in 34% of their events, MovieLens-100K's batches of 200 in
    53%; MovieLens batches of 1,000 (71%) kept the test NDCG@20 within the seed spread, 2,000 (80%)
    lost 3% of it and a quarter of the next-interaction MRR (`benchmarks/batch_quality.py`).
    MovieLens-100K's 80K training events stay at batch_size."""

    batch_size: int = Field(
        default=200, description="Events per step (TGN's 200); grown on long streams to keep within `max_steps`."
    )
    max_steps: int | None = Field(
        default=1000, ge=1, description="Most steps an epoch of the stream is cut into; batches grow past it."
    )
    epochs: int = 30
    patience: int = 5


def events_per_batch(temporal: TemporalGraph, train: TemporalTraining) -> int:
    """Events per batch of `train_temporal` on `temporal`: its training stream (TRAIN events) capped at `max_steps`."""
    return train.examples_per_batch(len(temporal.history_before(VALID).ts))


def train_temporal(
    graph: InteractionGraph,
    temporal: TemporalGraph,
    params: TemporalParams,
    train: TrainParams,
    context: TrainingContext = DEFAULT_CONTEXT,
    profiles: ProfileFacets | None = None,
) -> TrainedEmbeddings:
    """Fit, restore the best epoch, and embed at the test cut; `result.extra` holds the next-interaction MRR.

    With `profiles` (one row per user of `graph`), users' embeddings are fused with their profile facets.
    """
    if temporal.source_fingerprint != graph.fingerprint():
        raise ValueError("the temporal graph was built from another interaction graph: rebuild it")
    if profiles is not None and len(profiles.mask) != graph.n_users:
        raise ValueError(f"profiles cover {len(profiles.mask)} users, the graph has {graph.n_users}")
    train = TemporalTraining.model_validate(train.model_dump())  # plain TrainParams get the default max_steps
    torch.manual_seed(train.seed)
    model = TemporalGraphAttention(temporal.user_features, temporal.item_features, params, profiles)
    batch_size = events_per_batch(temporal, train)
    objective = TemporalObjective(model, graph, temporal, batch_size)
    result = fit(model, objective, train, context, description="temporal")
    model.load_state_dict(result.best_state)
    model.eval()
    # the memory is replayed in the batches it was trained on
    users, items = model.embeddings_at(temporal.history_before(TEST), temporal.cut_time(TEST), batch_size)
    valid_users, valid_items = model.embeddings_at(objective.history, objective.valid_time, batch_size)
    result.extra["next_interaction_mrr"] = next_interaction_mrr(model, temporal, TEST, batch_size)
    return TrainedEmbeddings(users, items, result, valid_users, valid_items)
