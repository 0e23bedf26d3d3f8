"""BPR batches: every training pair once per epoch, negatives never a positive of their user, the same
batches from the same seed, and negatives drawn as the batches are consumed (not all up front)."""

from __future__ import annotations

import torch

from grec_dagster.training.bpr import BPRSampler

N_USERS, N_ITEMS = 30, 12


def sampler(batch_size: int = 16, n_negatives: int = 3) -> BPRSampler:
    """Each user has 4-8 of the 12 items, so a uniform draw often hits a positive and must be redrawn."""
    generator = torch.Generator().manual_seed(0)
    keys = torch.cat(
        [u * N_ITEMS + torch.randperm(N_ITEMS, generator=generator)[: 4 + u % 5] for u in range(N_USERS)]
    )
    return BPRSampler(keys.sort().values, N_ITEMS, batch_size, n_negatives)


def epoch(bpr: BPRSampler, seed: int) -> list[tuple[torch.Tensor, ...]]:
    return list(bpr.epoch(torch.Generator().manual_seed(seed)))


def test_an_epoch_visits_every_pair_once_with_negatives_outside_the_users_positives() -> None:
    bpr = sampler()
    batches = epoch(bpr, seed=1)
    users, items, negatives = (torch.cat([batch[i] for batch in batches]) for i in range(3))

    assert len(batches) == len(bpr)
    assert torch.equal((users * N_ITEMS + items).sort().values, bpr.keys)
    assert negatives.shape == (len(bpr.keys), 3)
    negative_keys = users.unsqueeze(1) * N_ITEMS + negatives
    assert not torch.isin(negative_keys, bpr.keys).any()


def test_the_same_seed_gives_the_same_batches_and_another_seed_others() -> None:
    bpr = sampler()
    first, again, other = epoch(bpr, 1), epoch(bpr, 1), epoch(bpr, 2)
    assert all(torch.equal(a, b) for x, y in zip(first, again, strict=True) for a, b in zip(x, y, strict=True))
    assert not torch.equal(first[0][0], other[0][0])


def test_negatives_are_drawn_batch_by_batch() -> None:
    """After the first batch the generator has drawn the permutation and that batch's negatives only."""
    bpr = sampler(n_negatives=1)
    generator = torch.Generator().manual_seed(1)
    users, _, negatives = next(bpr.epoch(generator))

    replay = torch.Generator().manual_seed(1)
    torch.randperm(len(bpr.keys), generator=replay)
    assert torch.equal(bpr.negatives(users, replay), negatives)
    assert torch.equal(generator.get_state(), replay.get_state())


def whole_batch_redraws(bpr: BPRSampler, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The rule the sampler's draws are pinned to: every round checks the whole batch and redraws
    its clashes in row-major order."""
    items = torch.randint(bpr.n_items, users.shape, generator=generator)
    for _ in range(20):
        clash = torch.isin(users * bpr.n_items + items, bpr.keys)
        if not bool(clash.any()):
            break
        items[clash] = torch.randint(bpr.n_items, (int(clash.sum()),), generator=generator)
    return items


def test_redrawing_only_the_clashes_gives_the_whole_batch_rules_items() -> None:
    """Checking only last round's clashes is a speed-up, not a new sampler: the trained models'
    numbers rest on these exact draws."""
    bpr = sampler(n_negatives=3)
    users = torch.arange(N_USERS).repeat_interleave(4).unsqueeze(1).expand(-1, 3).contiguous()
    for seed in range(5):
        drawn = bpr.negatives(users, torch.Generator().manual_seed(seed))
        assert torch.equal(drawn, whole_batch_redraws(bpr, users, torch.Generator().manual_seed(seed)))
