"""The normalized user-item adjacency LightGCN propagates over, and a fast product with it.

    A_hat = D^{-1/2} A D^{-1/2},   A = [[0, R], [R^T, 0]]

with R the distinct (user, item) training pairs and D the degrees. Users take rows
0..n_users-1 and items the rows after them.
"""

from __future__ import annotations

import warnings

import torch


def normalized_adjacency(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """Sparse CSR A_hat from distinct training pairs; isolated nodes keep zero rows."""
    n = n_users + n_items
    rows = torch.cat([users, items + n_users])
    cols = torch.cat([items + n_users, users])
    degree = torch.bincount(rows, minlength=n).clamp(min=1).float()
    values = (degree[rows] * degree[cols]).rsqrt()
    order = torch.argsort(rows * n + cols)
    rows, cols, values = rows[order], cols[order], values[order]
    crow = torch.zeros(n + 1, dtype=torch.long)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols, values, (n, n))


class SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A; the gradient is A g, so backward is one more CSR product.

    torch's own backward for sparse @ dense transposes and coalesces A on every call, which
    costs more than the product itself.
    """

    @staticmethod
    def forward(ctx, adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adjacency = adjacency
        return adjacency @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        return None, ctx.adjacency @ grad


def propagate(adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):  # sparse CSR products have no bf16 kernel: x's own dtype
        return SymmetricSpMM.apply(adjacency, x)
