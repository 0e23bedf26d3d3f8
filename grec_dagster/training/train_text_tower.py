"""The text tower on an interaction graph: frozen text embeddings and BPR triples in, embeddings out.

Which pairs make a user's history (the mean of its items' text embeddings):

- training batches and validation (early stopping): TRAIN pairs only, since validation ranks
  the VALID pairs (a batch's positive is left out of its own user's mean, see the model);
- the final embeddings, which the test split is ranked with: TRAIN + VALID pairs. By the test
  period the valid events have happened, and the evaluator removes them from the ranking as
  history. The embeddings at the validation cut (TRAIN histories) are returned as well.

Item vectors depend on text only, so they are the same at both cuts, and an item first met
after training (a cold item) gets its vector like any other. For that reason negatives are drawn
only among items with a TRAIN event: an item without one is never a positive, so as a negative
it would teach the tower that its very text is disliked, and cold items are the ones the tower
is for (their future does not exist when a real model trains).

With the `lora` encoder the item vectors change as the adapters train: every item is re-encoded at
the start of each epoch (for the history means) and before each validation, and the checkpoint
keeps the adapters with the heads (`TrainedEmbeddings.weights`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from grec_dagster.graph.interactions import TRAIN, VALID, InteractionGraph
from grec_dagster.layout import TEXT_TOWER
from grec_dagster.models.text_tower import TextTower, TextTowerParams
from grec_dagster.storage import load_tensors
from grec_dagster.training.bpr import BPRSampler
from grec_dagster.training.embeddings import BPRObjective, TrainedEmbeddings
from grec_dagster.training.loop import DEFAULT_CONTEXT, TrainingContext, TrainParams, fit


def mean_profile_facets(path: Path) -> tuple[Tensor, int]:
    """The `profile_text` a `profile_embeddings` checkpoint gives: each user's mean facet embedding,
    zero for users without a profile, and the profile cut (`profile_from`)."""
    tensors, meta = load_tensors(path)
    return tensors["facets"].mean(dim=1) * tensors["mask"].unsqueeze(1), int(meta["as_of"])


class TextTowerObjective(BPRObjective):
    """`BPRObjective` whose negatives are drawn uniformly among the items with a TRAIN event, whose
    epochs start from item vectors as the tower's encoder stands (`refresh_item_text`), and whose
    pairs read the user's profile only when they came at or after the profile cut `profile_from`
    (epoch seconds; None: profiles are usable everywhere)."""

    def __init__(
        self,
        graph: InteractionGraph,
        model: TextTower,
        batch_size: int,
        n_negatives: int = 1,
        profile_from: int | None = None,
    ):
        super().__init__(graph, batch_size, lambda module: module.embed_all(), n_negatives)
        self.model = model
        self.n_items = graph.n_items
        self.trained_items = torch.nonzero(graph.train_item_counts > 0).squeeze(1)
        keys = graph.pairs(TRAIN)
        local = torch.searchsorted(self.trained_items, keys % graph.n_items)  # order-preserving: keys stay sorted
        count = len(self.trained_items)
        self.sampler = BPRSampler(keys // graph.n_items * count + local, count, batch_size, n_negatives)
        self.pair_keys, self.pair_from = keys, first_times(graph, keys)
        self.profile_from = profile_from

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[Tensor, ...]]:
        self.model.refresh_item_text()
        for users, positives, negatives in self.sampler.epoch(generator):
            items = self.trained_items[positives]
            if self.profile_from is None:
                with_profile = torch.ones_like(users, dtype=torch.bool)
            else:
                at = torch.searchsorted(self.pair_keys, users * self.n_items + items)
                with_profile = self.pair_from[at] >= self.profile_from
            yield users, items, self.trained_items[negatives], with_profile


def first_times(graph: InteractionGraph, keys: Tensor) -> Tensor:
    """When each training pair of `keys` (sorted `user * n_items + item`) first happened."""
    users, items, ts = graph.edges(TRAIN)
    at = torch.searchsorted(keys, users * graph.n_items + items)
    return torch.full((len(keys),), torch.iinfo(torch.long).max).scatter_reduce(0, at, ts, "amin")


def train_text_tower(
    graph: InteractionGraph,
    item_text: Tensor,
    profile_text: Tensor | None,
    params: TextTowerParams,
    train: TrainParams,
    context: TrainingContext = DEFAULT_CONTEXT,
    texts: list[str] | None = None,
    profile_from: int | None = None,
) -> TrainedEmbeddings:
    """Fit on TRAIN, early-stop on VALID, then embed users from their TRAIN + VALID histories.

    `item_text` [n_items, d] and `profile_text` [n_users, d'] (zero rows: no profile; None: no
    profiles at all) are rows in the graph's dense id order, e.g.
    `TextEncoder().encode(item_texts(items, graph.item_ids))` (`grec_dagster.llm`); the `lora`
    encoder also needs those `texts`. Profiles written at `profile_from` (epoch seconds, the
    profile cut) are read only by training pairs from then on; validation and test read them all.
    """
    if len(item_text) != graph.n_items:
        raise ValueError(f"item_text has {len(item_text)} rows for {graph.n_items} items")
    torch.manual_seed(train.seed)
    model = TextTower(item_text, profile_text, graph.n_users, graph.pairs(TRAIN), params, texts)
    objective = TextTowerObjective(graph, model, train.batch_size, params.negatives, profile_from)
    result = fit(model, objective, train, context, description=TEXT_TOWER)
    model.load_state_dict(result.best_state)
    model.eval()
    valid_users, items = model.embed_all()
    model.set_history(graph.pairs(TRAIN, VALID))
    users, _ = model.embed_all()
    # safetensors refuses shared storage, hence the clone
    return TrainedEmbeddings(users, items, result, valid_users, items.clone(), model.trained_weights())
