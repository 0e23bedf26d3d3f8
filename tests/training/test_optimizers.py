"""LazyAdamW is torch's AdamW on dense gradients and torch's SparseAdam on sparse ones, bit for bit;
its decoupled weight decay moves only the rows a sparse step touches; its state round-trips through
the checkpoint format `fit` writes."""

from __future__ import annotations

import copy

import torch
from torch import nn

from grec_dagster.training.checkpoints import flatten_optimizer, unflatten_optimizer
from grec_dagster.training.optimizers import LazyAdamW, set_weight_decay

STEPS = 6


class Tower(nn.Module):
    """A sparse id table and a dense layer, as GraphSAGE and the temporal model have."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ids = nn.Embedding(50, 8, sparse=True)
        self.dense = nn.Linear(8, 8)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.dense(self.ids(rows)).pow(2).mean()


def batches() -> list[torch.Tensor]:
    """Rows 40..49 never appear; row 3 repeats within a batch (its gradient is a sum)."""
    generator = torch.Generator().manual_seed(1)
    return [torch.cat([torch.randint(40, (12,), generator=generator), torch.tensor([3, 3])]) for _ in range(STEPS)]


def train(model: Tower, optimizers: list[torch.optim.Optimizer], steps: list[torch.Tensor]) -> None:
    for rows in steps:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        model(rows).backward()
        for optimizer in optimizers:
            optimizer.step()


def test_dense_and_sparse_updates_are_torchs_adamw_and_sparseadam_exactly() -> None:
    """SparseAdam has no weight decay, so the table's group runs without it here (the next test covers it)."""
    ours, theirs = Tower(), Tower()
    optimizer = LazyAdamW(
        [{"params": [ours.ids.weight], "weight_decay": 0.0}, {"params": ours.dense.parameters()}],
        lr=0.01,
        weight_decay=0.1,
    )
    train(ours, [optimizer], batches())
    reference = [
        torch.optim.SparseAdam([theirs.ids.weight], lr=0.01),
        torch.optim.AdamW(theirs.dense.parameters(), lr=0.01, weight_decay=0.1),
    ]
    train(theirs, reference, batches())
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name


def test_weight_decay_moves_only_the_touched_rows_by_the_decoupled_factor() -> None:
    model = Tower()
    before = model.ids.weight.detach().clone()
    optimizer = LazyAdamW(model.parameters(), lr=0.01, weight_decay=0.5)
    rows = torch.tensor([1, 4, 4, 9])
    model(rows).backward()
    grads = model.ids.weight.grad.coalesce()
    optimizer.step()

    untouched = torch.ones(50, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(model.ids.weight[untouched], before[untouched])
    # The same step without decay, from the decayed rows: what decoupled decay means.
    undecayed = Tower()
    with torch.no_grad():
        undecayed.ids.weight.copy_(before)
        undecayed.ids.weight[rows] *= 1 - 0.01 * 0.5
    undecayed.ids.weight.grad = grads
    LazyAdamW([undecayed.ids.weight], lr=0.01, weight_decay=0.0).step()
    assert torch.equal(model.ids.weight, undecayed.ids.weight)


def test_a_row_a_step_does_not_touch_keeps_its_bits() -> None:
    """The point of the lazy update: dense AdamW would move row 1 at the second step by its momentum."""
    model = Tower()
    optimizer = LazyAdamW(model.parameters(), lr=0.01)
    train(model, [optimizer], [torch.tensor([1, 2])])
    after_first = model.ids.weight.detach().clone()
    train(model, [optimizer], [torch.tensor([2, 3])])
    assert torch.equal(model.ids.weight[[0, 1, 4]], after_first[[0, 1, 4]])
    assert not torch.equal(model.ids.weight[[2, 3]], after_first[[2, 3]])

    dense = Tower()
    dense.ids.sparse = False
    reference = torch.optim.AdamW(dense.parameters(), lr=0.01, weight_decay=0.0)
    train(dense, [reference], [torch.tensor([1, 2])])
    moved_by_momentum = dense.ids.weight.detach().clone()
    train(dense, [reference], [torch.tensor([2, 3])])
    assert not torch.equal(dense.ids.weight[1], moved_by_momentum[1])


def test_weight_decay_changed_mid_run_is_used_and_kept_in_the_state() -> None:
    """Raising weight decay between steps (a grokking watch does) is what torch's AdamW does with it."""
    ours, theirs = Tower(), Tower()
    optimizer = LazyAdamW(ours.dense.parameters(), lr=0.01, weight_decay=0.0)
    reference = torch.optim.AdamW(theirs.dense.parameters(), lr=0.01, weight_decay=0.0)
    steps = batches()
    train(ours, [optimizer], steps[:2])
    train(theirs, [reference], steps[:2])
    set_weight_decay(optimizer, 0.3)
    reference.param_groups[0]["weight_decay"] = 0.3
    train(ours, [optimizer], steps[2:])
    train(theirs, [reference], steps[2:])

    assert torch.equal(ours.dense.weight, theirs.dense.weight)
    assert [group["weight_decay"] for group in optimizer.state_dict()["param_groups"]] == [0.3]


def test_state_round_trips_through_the_checkpoint_format_and_resumes_to_the_same_bits() -> None:
    steps = batches()
    uninterrupted = Tower()
    train(uninterrupted, [LazyAdamW(uninterrupted.parameters(), lr=0.01, weight_decay=0.1)], steps)

    first = Tower()
    optimizer = LazyAdamW(first.parameters(), lr=0.01, weight_decay=0.1)
    train(first, [optimizer], steps[:3])
    tensors, meta = flatten_optimizer(optimizer.state_dict())
    resumed = copy.deepcopy(first)
    restored = LazyAdamW(resumed.parameters(), lr=0.01, weight_decay=0.1)
    restored.load_state_dict(unflatten_optimizer(tensors, meta))
    train(resumed, [restored], steps[3:])

    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
