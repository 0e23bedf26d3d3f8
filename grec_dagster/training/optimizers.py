"""The one optimizer every model trains with: AdamW, except that a sparse gradient moves only its rows.

Why: an id-embedding table (`nn.Embedding(..., sparse=True)`) of a graph model has a row per node,
and a batch touches a few thousand of them. Dense AdamW reads and writes every row of the table and
of both its moment tensors at every step, so a step costs O(nodes) even though the batch is O(batch);
at 10M interactions that was most of a GraphSAGE or temporal step. Here:

- a dense gradient gets torch's AdamW update, bit for bit (`torch.optim.adam.adam` with decoupled
  weight decay, the function `torch.optim.AdamW` calls), through its multi-tensor (`foreach`)
  implementation: the same arithmetic as the per-tensor loop `torch.optim.AdamW` runs on a CPU, but
  one C++ call per operation for all parameters instead of ~10 Python-dispatched calls per
  parameter (a temporal step has ~20 small parameters);
- a sparse gradient gets lazy Adam, torch's `SparseAdam` update bit for bit: the gradient is
  coalesced (duplicate rows summed) and only its rows' moments and values change; the step count,
  and with it the bias correction, is the table's (as in `SparseAdam`), not the row's.

Weight decay is decoupled (AdamW's) in both cases: before a step's Adam update each parameter it
updates is multiplied by (1 - lr * weight_decay). For a sparse gradient that means the rows in the
gradient only: a row decays in the steps whose batch touches it, so a row met in a share s of the
steps decays like a dense parameter under weight_decay * s. Untouched rows keep their bits.

To change weight decay (or the learning rate) mid-run, set it on every param group, e.g.
`set_weight_decay(optimizer, 0.1)`, between steps; the next step uses it. The groups are part of
`state_dict()`, so the checkpoint `fit` writes after an epoch carries the new value, and a resumed
run continues with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.adam import adam


class LazyAdamW(torch.optim.Optimizer):
    """AdamW on dense gradients, lazy Adam with decoupled weight decay on sparse (row) gradients."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("LazyAdamW takes no closure: compute the loss and call backward before step()")
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            self._dense_step(group, [p for p in with_grad if not p.grad.is_sparse])
            for param in with_grad:
                if param.grad.is_sparse:
                    self._row_step(group, param)

    def _moments(self, param: Tensor, step: int | Tensor) -> dict[str, Any]:
        state = self.state[param]
        if not state:
            state["step"] = step
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def _dense_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """torch.optim.AdamW's step (its state layout too: a float tensor step count on the CPU)."""
        if not params:
            return
        states = [self._moments(p, torch.tensor(0.0)) for p in params]
        beta1, beta2 = group["betas"]
        adam(
            params,
            [p.grad for p in params],
            [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states],
            [],
            [state["step"] for state in states],
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
            decoupled_weight_decay=True,
            foreach=True,
        )

    def _row_step(self, group: dict[str, Any], param: Tensor) -> None:
        """SparseAdam's update of the gradient's rows, after decaying just those rows."""
        state = self._moments(param, 0)
        state["step"] += 1
        grad = param.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        if not rows.numel():
            return
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        # The gathered rows are fresh copies, so the arithmetic runs in place on them: the same
        # operations in the same order as SparseAdam's, without allocating a new rows x dim tensor
        # for each (a GraphSAGE step at 10M interactions updates ~100K rows).
        if group["weight_decay"]:
            param.index_copy_(0, rows, param[rows].mul_(1 - lr * group["weight_decay"]))
        exp_avg = state["exp_avg"][rows]
        exp_avg.add_((values - exp_avg).mul_(1 - beta1))
        exp_avg_sq = state["exp_avg_sq"][rows]
        exp_avg_sq.add_(values.pow(2).sub_(exp_avg_sq).mul_(1 - beta2))
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        step_size = lr * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
        param.index_add_(0, rows, exp_avg.div_(exp_avg_sq.sqrt_().add_(eps)).mul_(-step_size))


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> LazyAdamW:
    """What `fit` steps with: every parameter of `model`, at the run's learning rate and weight decay."""
    return LazyAdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Decoupled weight decay from the next step on, for every parameter (see the module docstring)."""
    for group in optimizer.param_groups:
        group["weight_decay"] = weight_decay
