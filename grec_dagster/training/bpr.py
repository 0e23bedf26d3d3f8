"""BPR triples (user, positive item, negative item) for pairwise training, vectorized.

Each epoch visits every distinct training pair once in a seeded random order; each positive
gets `n_negatives` negatives drawn uniformly from the items the user has not met in training
(rejection sampling, redrawn as a batch until no negative collides with a positive).
Negatives have shape [batch] for one negative and [batch, n_negatives] otherwise.

Negatives are drawn batch by batch as the epoch is consumed, not all up front: drawing them for
every pair of a 10M-interaction log took 30 s and held them all in memory before the first step.
The draws still come from the one seeded generator, in batch order, so an epoch's batches are the
same in every process and after a resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

MAX_REDRAWS = 20


class BPRSampler:
    def __init__(self, positive_keys: torch.Tensor, n_items: int, batch_size: int, n_negatives: int = 1):
        """`positive_keys`: sorted distinct `user * n_items + item` training pairs."""
        self.keys = positive_keys
        self.n_items = n_items
        self.batch_size = batch_size
        self.n_negatives = n_negatives

    def __len__(self) -> int:
        return (len(self.keys) + self.batch_size - 1) // self.batch_size

    def _is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        probe = users * self.n_items + items
        where = torch.searchsorted(self.keys, probe).clamp(max=len(self.keys) - 1)
        return self.keys[where] == probe

    def negatives(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each redraw round checks only the draws that clashed in the round before (the others
        stay valid), in the order a whole-batch check would redraw them, so the generator gives
        the same items as checking the whole batch every round."""
        items = torch.randint(self.n_items, users.shape, generator=generator)
        flat_users, flat_items = users.reshape(-1), items.view(-1)
        pending = torch.arange(len(flat_items))
        for _ in range(MAX_REDRAWS):
            pending = pending[self._is_positive(flat_users[pending], flat_items[pending])]
            if len(pending) == 0:
                break
            flat_items[pending] = torch.randint(self.n_items, (len(pending),), generator=generator)
        return items

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.keys), generator=generator)
        for start in range(0, len(order), self.batch_size):
            keys = self.keys[order[start : start + self.batch_size]]
            users = keys // self.n_items
            draws = users if self.n_negatives == 1 else users.unsqueeze(1).expand(-1, self.n_negatives)
            yield users, keys % self.n_items, self.negatives(draws.contiguous(), generator)
