"""EASE (Steck, WWW 2019): a linear item-item model with a closed form, the baseline that many
deep recommenders fail to beat.

    B = argmin_B ||X - X B||_F^2 + lambda ||B||_F^2   subject to diag(B) = 0
      = I - P diag(1 / diag(P)),   P = (X^T X + lambda I)^{-1}
    score(u, i) = (X B)[u, i]

X is the binary user x item matrix of distinct (user, item) pairs. B is column j of the
Lagrangian solution: (X^T X + lambda I) B = X^T X - diag(mu), with mu chosen so diag(B) = 0.

The inverse is taken in float64. Its relative error grows with the condition number
1 + sigma_max(X^T X) / lambda: on MovieLens-100K that is ~2,400 at lambda = 10, where float32
already changes the top 20 of 0.3% of users; float64 takes that off the table for any lambda
and any catalog, for 0.1 s at 1,682 items.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field, field_validator

MAX_ITEMS = 20_000
"""Largest catalog EASE inverts: three n_items^2 float64 matrices (Gram, Cholesky factor,
inverse) take 9.6 GB at this size, and the cubic solve minutes on a CPU."""


class EASEParams(BaseModel):
    lambdas: list[float] = Field(
        default=[62.5, 125.0, 250.0, 500.0, 1000.0],
        min_length=1,
        description="L2 weights tried on validation NDCG@20: RecBole's default 250, and two halvings and doublings.",
    )

    @field_validator("lambdas")
    @classmethod
    def _positive(cls, lambdas: list[float]) -> list[float]:
        if any(reg <= 0 for reg in lambdas):
            raise ValueError(f"every lambda must be > 0 (X^T X alone may be singular), got {lambdas}")
        return lambdas


def check_catalog(n_items: int) -> None:
    """Refuse a catalog whose n_items x n_items inverse would not fit, before allocating it."""
    if n_items > MAX_ITEMS:
        gigabytes = 3 * 8 * n_items**2 / 1e9
        raise ValueError(
            f"EASE inverts an n_items x n_items matrix: {n_items:,} items would need about {gigabytes:.0f} GB "
            f"(the limit is {MAX_ITEMS:,} items); filter the catalog or use a tower that scales, such as LightGCN"
        )


def binary_matrix(pairs: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """X [n_users, n_items] in float32, 1 where `pairs` (sorted `user * n_items + item` keys) has the pair."""
    matrix = torch.zeros(n_users, n_items)
    matrix[pairs // n_items, pairs % n_items] = 1.0
    return matrix


def gram(matrix: torch.Tensor) -> torch.Tensor:
    """X^T X in float64. Computed in float32, which is exact: every entry is a count of users,
    a sum of 0/1 products below 2^24, so no rounding happens in any order of summation."""
    return (matrix.T @ matrix).double()


def ease_weights(gram_matrix: torch.Tensor, reg: float) -> torch.Tensor:
    """B [n_items, n_items] in float64 from X^T X and lambda, as the module docstring states it."""
    system = gram_matrix.clone()
    system.diagonal().add_(reg)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(system))  # X^T X + lambda I is positive definite
    weights = -inverse / inverse.diagonal()  # column j divided by P_jj
    weights.fill_diagonal_(0.0)
    return weights
