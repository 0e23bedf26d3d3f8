"""A seeded shop with a planted algorithmic taste: the recommender's modular addition.

**The relation.** Every user carries two attributes a, b in Z_p and buys only the items of
group c = (a + b) mod p (the item `category`, 'g00', 'g01', ..). Every group sells the same
number of items and draws the same number of buyers on average, so popularity knows nothing
that a new user's attributes do not, and a user's own history only repeats its group.

**The split.** The p attribute pairs (a, b) of each group are dealt once: a `train_fraction`
of them are training pairs, whose users shop before the validation cut; the rest are held
out, half of them shopping between the validation and the test cut, half after it. The log has exactly
8/10 of its events in the first period and 1/10 in each other, so the pipeline's temporal
split (cuts at the 80% and 90% quantiles of event time) falls on the period boundaries: every
validation and test user is cold, with an (a, b) combination that no training event shows,
and only the rule ranks its items. Each training user buys every item of its group (so none
of them is ever one of its sampled negatives), repeating purchases once it has them all.

**Why it groks.** Held-out pairs are to this shop what held-out sums are to modular addition
(Power et al., 2022). GraphSAGE trained without neighbor sampling (`fanouts: [0, 0]`) embeds
a user from its attributes through one ReLU layer, and scores it by a dot product with its
item's embedding: the modular-addition MLP. (With neighbors, a training user's one neighbor
is its group's item, which answers every training example and leaves the attributes unused:
validation stays at chance.) The attributes come dummy-coded, one 0/1 column per level
(`a00` .. `a46`, `b00` .. `b46`), which the feature builder standardizes: a level's column is
then sqrt(p - 1) ~ 7 where set, so the attribute embeddings start ~7 times larger than the
one-hot categorical column would make them. A large initial weight norm is what makes a
network memorise first and generalize only once weight decay has shrunk it (Liu et al.,
2023, "Omnigrok"); with categorical `a`, `b` columns the same tower learns the rule while it
fits, and its validation rises from the start, with no plateau.

**The recipe** (GraphSAGE on the default shop, p = 47, 40% of pairs in training):
`dim: 128, fanouts: [0, 0], id_dropout: 0.5, dropout: 0.0, negatives: 16, lr: 0.01,
weight_decay: 2.0, batch_size: 4096` (all 884 training pairs in one batch), `epochs: 800,
eval_every: 10`. The training loss falls from 0.69 to ~0.02 by epoch 50 and stays flat;
validation NDCG@20 stays near chance (~0.06-0.12) to about epoch 300, then climbs to ~0.8 by
epoch 650 and ~0.99 by epoch 800 (about 25 s on one thread). With weight decay 1.5 the climb
starts only near epoch 450 and needs ~900 epochs; with 4.0 the loss never settles below 0.02
before validation rises. `tests/data/test_grokking_shop.py` holds the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grec_dagster.data.schema import SourceFrames

SOURCE = "grokking-shop"
PERIOD_TENTHS = (8, 1, 1)
"""Tenths of the log before the validation cut, between the cuts, and after the test cut."""
MAX_MODULUS = 50
"""Item groups are the category, and the feature builder one-hots at most 50 categories."""
_DAY_US = 86_400_000_000


@dataclass(frozen=True)
class GrokkingShopConfig:
    """Sizes and seed of the shop in the module docstring."""

    modulus: int = 47
    """p: the levels of each user attribute, and the item groups."""
    train_fraction: float = 0.4
    """Share of the p^2 attribute pairs whose users shop in the training period."""
    users_per_pair: int = 1
    items_per_group: int = 1
    n_interactions: int | None = None
    """None: the fewest that give every held-out user a purchase and every training user its group."""
    n_days: int = 90
    start: str = "2024-01-01"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.modulus <= MAX_MODULUS:
            raise ValueError(f"modulus must be in [2, {MAX_MODULUS}]: it is the number of item categories")
        if min(self.users_per_pair, self.items_per_group, self.n_days) < 1:
            raise ValueError("users_per_pair, items_per_group and n_days must be >= 1")
        if min(self.pairs_per_group) < 1:
            raise ValueError(f"train_fraction {self.train_fraction} leaves a period without attribute pairs")
        if self.n_interactions is not None and self.n_interactions < self._fewest_events():
            raise ValueError(
                f"n_interactions {self.n_interactions} is too few: a training user needs all "
                f"{self.items_per_group} items of its group and a held-out user one; use at least "
                f"{self._fewest_events()}"
            )

    @property
    def pairs_per_group(self) -> tuple[int, int, int]:
        """Of the p attribute pairs of each group, how many shop in the training, validation and test periods."""
        p = self.modulus
        train = round(self.train_fraction * p)
        valid = (p - train) // 2
        return train, valid, p - train - valid

    @property
    def pair_counts(self) -> tuple[int, int, int]:
        """Attribute pairs, over all groups, that shop in the training, validation and test periods."""
        return tuple(self.modulus * count for count in self.pairs_per_group)  # type: ignore[return-value]

    @property
    def period_events(self) -> tuple[int, int, int]:
        """Events per period: the log, rounded down to a multiple of 10, in `PERIOD_TENTHS`."""
        total = self.n_interactions if self.n_interactions is not None else self._fewest_events()
        return tuple(total // 10 * tenths for tenths in PERIOD_TENTHS)  # type: ignore[return-value]

    def _fewest_events(self) -> int:
        train, valid, test = (pairs * self.users_per_pair for pairs in self.pair_counts)
        return 10 * max(valid, test, math.ceil(train * self.items_per_group / PERIOD_TENTHS[0]))


def group_of(a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
    """The planted relation: the item group that users with attributes (a, b) buy."""
    return (a + b) % modulus


def generate_grokking_shop(config: GrokkingShopConfig) -> SourceFrames:
    """Interactions in time order (one period per set of attribute pairs), items, users."""
    rng = np.random.default_rng(config.seed)
    p = config.modulus
    user_pair = np.repeat(np.arange(p * p), config.users_per_pair)
    a, b = np.divmod(user_pair, p)
    group = group_of(a, b, p)

    bounds = np.cumsum((0, *PERIOD_TENTHS)) / 10 * config.n_days
    users, items, days = [], [], []
    pair_period = _deal_pairs(config, rng)
    for period, n_events in enumerate(config.period_events):
        members = np.flatnonzero(pair_period[user_pair] == period)
        user, item = _purchases(members, group[members], n_events, config.items_per_group, rng)
        users.append(user)
        items.append(item)
        days.append(rng.uniform(bounds[period], bounds[period + 1], user.size))
    start = pd.Timestamp(config.start).to_datetime64().astype("datetime64[us]").astype(np.int64)
    ts = start + (np.concatenate(days) * _DAY_US).astype(np.int64)
    by_time = np.argsort(ts, kind="stable")
    user_ids, item_ids = _ids("u", user_pair.size), _ids("i", p * config.items_per_group)
    return SourceFrames(
        interactions=_log(user_ids[np.concatenate(users)[by_time]], item_ids[np.concatenate(items)[by_time]], ts[by_time]),
        items=_catalog(item_ids, config),
        users=_users(user_ids, a, b, p),
    )


def _deal_pairs(config: GrokkingShopConfig, rng: np.random.Generator) -> np.ndarray:
    """The period of each pair (index a * p + b), dealt within each group: every group has the same
    number of pairs in each period, so each period's popularity is flat."""
    p = config.modulus
    period_by_rank = np.repeat(np.arange(3), config.pairs_per_group)
    a = rng.random((p, p)).argsort(axis=1)  # row c: group c's pairs (a, c - a) in dealing order
    b = (np.arange(p)[:, None] - a) % p
    period = np.empty(p * p, dtype=np.int64)
    period[a * p + b] = period_by_rank[None, :]
    return period


def _purchases(
    members: np.ndarray, group: np.ndarray, n_events: int, items_per_group: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`n_events` purchases spread as evenly as possible over `members`: each buys the items of
    its group in its own random order, and starts over once it has them all."""
    per_user = np.full(members.size, n_events // members.size)
    per_user[rng.choice(members.size, n_events % members.size, replace=False)] += 1
    order = rng.random((members.size, items_per_group)).argsort(axis=1)
    row = np.repeat(np.arange(members.size), per_user)
    nth = np.arange(row.size) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    return members[row], group[row] * items_per_group + order[row, nth % items_per_group]


def _log(user_id: np.ndarray, item_id: np.ndarray, ts: np.ndarray) -> pd.DataFrame:
    n = ts.size
    return pd.DataFrame(
        {
            "user_id": pd.Series(user_id, dtype="string"),
            "item_id": pd.Series(item_id, dtype="string"),
            "ts": pd.Series(ts.astype("datetime64[us]")),
            "event": pd.Series(["purchase"] * n, dtype="string"),
            "value": np.ones(n),
            "source": pd.Series([SOURCE] * n, dtype="string"),
            "source_row": np.arange(n, dtype=np.int64),
            "positive": pd.Series(np.ones(n, dtype=bool), dtype="boolean"),
        }
    )


def _catalog(item_ids: np.ndarray, config: GrokkingShopConfig) -> pd.DataFrame:
    """Items of a group side by side; a title names the group and a number that every group shares."""
    group, number = np.divmod(np.arange(item_ids.size), config.items_per_group)
    category = _ids("g", config.modulus)[group]
    return pd.DataFrame(
        {
            "item_id": pd.Series(item_ids, dtype="string"),
            "title": pd.Series([f"{c} item {k + 1}" for c, k in zip(category, number, strict=True)], dtype="string"),
            "category": pd.Series(category, dtype="string"),
        }
    )


def _users(user_ids: np.ndarray, a: np.ndarray, b: np.ndarray, modulus: int) -> pd.DataFrame:
    """The id and one 0/1 column per level of each attribute (why dummies: the module docstring)."""
    levels = np.arange(modulus)
    columns = {"user_id": pd.Series(user_ids, dtype="string")}
    for prefix, values in (("a", a), ("b", b)):
        columns |= dict(zip(_ids(prefix, modulus), (values[:, None] == levels).astype(np.int64).T, strict=True))
    return pd.DataFrame(columns)


def _ids(prefix: str, count: int) -> np.ndarray:
    """'g07'-style codes, zero-padded to a common width."""
    width = len(str(count - 1))
    return np.array([f"{prefix}{index:0{width}d}" for index in range(count)])
