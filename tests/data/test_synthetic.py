"""The synthetic shop: schema, integrity, and the structure recommenders are meant to learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grec_dagster.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS, conform, conform_users
from grec_dagster.data.synthetic import SyntheticConfig, SyntheticShop, generate_synthetic, simulate_shop


@pytest.fixture(scope="module")
def shop() -> SyntheticShop:
    return simulate_shop(SyntheticConfig(n_interactions=60_000, seed=7))


def _window(config: SyntheticConfig) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(config.start)
    return start, start + pd.Timedelta(days=config.n_days)


def _herfindahl(log: pd.DataFrame, key: str, value: str) -> float:
    """Mean over keys with 10+ rows of sum(share ** 2) of `value`: 1 means a key sticks to one value.

    Keys with a handful of rows look concentrated whatever the structure, so they are left out.
    """
    rows = log.groupby(key, observed=True).size()
    log = log[log[key].isin(rows.index[rows >= 10])]
    shares = log.groupby([key, value], observed=True).size() / log.groupby(key, observed=True).size()
    return float((shares**2).groupby(level=0).sum().mean())


def _with_items(shop: SyntheticShop) -> pd.DataFrame:
    return shop.frames.interactions.merge(shop.frames.items, on="item_id", how="left")


def test_same_seed_same_frames_and_other_seed_other_frames() -> None:
    config = SyntheticConfig(n_interactions=5_000, seed=3)
    first, again = generate_synthetic(config), generate_synthetic(config)
    other = generate_synthetic(SyntheticConfig(n_interactions=5_000, seed=4))
    for name in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(again, name))
        assert not getattr(first, name).equals(getattr(other, name))


def test_frames_already_follow_the_schema(shop: SyntheticShop) -> None:
    frames = shop.frames
    pd.testing.assert_frame_equal(frames.interactions, conform(frames.interactions, INTERACTION_COLUMNS))
    pd.testing.assert_frame_equal(frames.items, conform(frames.items, ITEM_COLUMNS))
    pd.testing.assert_frame_equal(frames.users, conform_users(frames.users))
    assert list(frames.users.columns) == ["user_id", "age_band", "region", "signup_day"]
    assert frames.users.signup_day.dtype == np.int64
    for frame in (frames.interactions, frames.items, frames.users):
        assert not frame.isna().any().any()


def test_log_rows_are_numbered_in_time_order(shop: SyntheticShop) -> None:
    log = shop.frames.interactions
    assert len(log) == 60_000
    assert log.ts.is_monotonic_increasing
    assert (log.source_row.to_numpy() == np.arange(len(log))).all()
    assert set(log.source) == {"synthetic"}
    assert log.user_id.str.fullmatch(r"u\d{6}").all() and log.item_id.str.fullmatch(r"i\d{6}").all()


def test_every_interaction_points_at_a_known_user_and_item(shop: SyntheticShop) -> None:
    frames = shop.frames
    assert frames.users.user_id.is_unique and frames.items.item_id.is_unique
    assert frames.interactions.user_id.isin(frames.users.user_id).all()
    assert frames.interactions.item_id.isin(frames.items.item_id).all()


def test_nothing_happens_before_release_signup_or_outside_the_window(shop: SyntheticShop) -> None:
    config = SyntheticConfig(n_interactions=60_000, seed=7)
    start, end = _window(config)
    log = shop.frames.interactions
    release = pd.Series(shop.item_release.to_numpy(), index=shop.frames.items.item_id)
    signup = pd.Series(shop.frames.users.signup_day.to_numpy(), index=shop.frames.users.user_id)

    assert (log.ts >= start).all() and (log.ts < end).all()
    assert (log.ts.to_numpy() >= release.reindex(log.item_id).to_numpy()).all()
    active_day = ((log.ts - start) // pd.Timedelta(days=1)).to_numpy()
    assert (active_day >= signup.reindex(log.user_id).to_numpy()).all()


def test_purchases_are_worth_the_price_and_follow_the_funnel(shop: SyntheticShop) -> None:
    log = _with_items(shop)
    purchase = log.event == "purchase"
    assert set(log.event) == {"view", "cart", "purchase"}
    assert np.allclose(log.value[purchase], log.price[purchase])
    assert (log.value[~purchase] == 1.0).all()
    counts = log.event.value_counts()
    assert counts["view"] > counts["cart"] > counts["purchase"] > 0
    first_view = log[log.event == "view"].groupby(["user_id", "item_id"]).ts.min()
    first_buy = log[purchase].groupby(["user_id", "item_id"]).ts.min()
    assert (first_view.reindex(first_buy.index) <= first_buy).all()


def test_item_popularity_and_user_activity_are_heavy_tailed(shop: SyntheticShop) -> None:
    log = shop.frames.interactions
    for key, table in (("item_id", shop.frames.items), ("user_id", shop.frames.users)):
        counts = np.sort(log[key].value_counts().reindex(table[key], fill_value=0).to_numpy())[::-1]
        top_fifth = counts[: len(counts) // 5].sum() / counts.sum()
        assert top_fifth > 0.5, key


def test_users_stick_to_few_categories_and_brands(shop: SyntheticShop) -> None:
    """Compared with the same log where the attribute is shuffled across rows (within category for brand)."""
    log = _with_items(shop)
    rng = np.random.default_rng(0)
    shuffled_category = log.assign(category=rng.permutation(log.category.to_numpy()))
    assert _herfindahl(log, "user_id", "category") > 2 * _herfindahl(shuffled_category, "user_id", "category")

    brand_in_category = log.assign(key=log.user_id + "/" + log.category)
    shuffled_brand = brand_in_category.assign(
        brand=brand_in_category.groupby("category").brand.transform(lambda brands: rng.permutation(brands.to_numpy()))
    )
    assert _herfindahl(brand_in_category, "key", "brand") > 1.1 * _herfindahl(shuffled_brand, "key", "brand")


def test_tastes_drift_across_the_window() -> None:
    """A user's category mix in the first and last thirds differs more when tastes drift."""

    def drift_distance(drift: float) -> float:
        shop = simulate_shop(SyntheticConfig(n_interactions=40_000, n_users=400, taste_drift=drift, seed=1))
        log = _with_items(shop)
        third = log.ts.quantile([1 / 3, 2 / 3]).to_numpy()
        early = log[log.ts < third[0]].groupby("user_id").category.value_counts(normalize=True)
        late = log[log.ts >= third[1]].groupby("user_id").category.value_counts(normalize=True)
        both = early.index.get_level_values(0).unique().intersection(late.index.get_level_values(0).unique())
        mix = pd.concat([early, late], axis=1, keys=["early", "late"]).fillna(0.0).loc[both]
        return float((mix.early - mix.late).abs().groupby(level=0).sum().mean() / 2)

    assert drift_distance(1.0) > drift_distance(0.0) + 0.1


def test_new_items_and_users_arrive_during_the_window(shop: SyntheticShop) -> None:
    config = SyntheticConfig(n_interactions=60_000, seed=7)
    start, end = _window(config)
    log = shop.frames.interactions
    released_inside = shop.item_release >= start
    assert abs(released_inside.mean() - config.new_item_share) < 0.02

    last_tenth = end - (end - start) / 10
    late_items = shop.frames.items.item_id[(shop.item_release >= last_tenth).to_numpy()]
    first_seen = log.groupby("item_id").ts.min()
    late_seen = first_seen.reindex(late_items).dropna()
    assert len(late_seen) > 0 and (late_seen >= last_tenth).all()

    joined_inside = shop.frames.users.user_id[shop.frames.users.signup_day > 0]
    assert log.user_id.isin(joined_inside).any()
    assert log.groupby("user_id").ts.min().quantile(0.9) > start + (end - start) / 2


def test_a_users_past_predicts_their_future_better_than_popularity(shop: SyntheticShop) -> None:
    """Temporal 80/10/10, new (user, item) pairs of the last tenth: weighting popularity by the
    user's train-time category share beats global popularity, which itself beats chance by far.
    A training-free proxy for 'LightGCN beats MostPop'."""
    log = _with_items(shop)
    train_end, test_start = log.ts.quantile([0.8, 0.9]).to_numpy()
    train, test = log[log.ts < train_end], log[log.ts >= test_start]
    test = test[test.user_id.isin(train.user_id)]
    seen = set(zip(train.user_id, train.item_id, strict=True))
    test = test[[pair not in seen for pair in zip(test.user_id, test.item_id, strict=True)]].drop_duplicates(
        ["user_id", "item_id"]
    )

    items = shop.frames.items.set_index("item_id")
    popularity = train.item_id.value_counts().reindex(items.index, fill_value=0).to_numpy(dtype=float)
    category_code = pd.factorize(items.category)[0]
    users = pd.Index(test.user_id.unique())
    train = train[train.user_id.isin(users)]
    share = np.zeros((len(users), category_code.max() + 1))
    np.add.at(share, (users.get_indexer(train.user_id), category_code[items.index.get_indexer(train.item_id)]), 1.0)
    share /= share.sum(axis=1, keepdims=True)
    seen_mask = np.zeros((len(users), len(items)), dtype=bool)
    seen_mask[users.get_indexer(train.user_id), items.index.get_indexer(train.item_id)] = True
    truth = np.zeros_like(seen_mask)
    truth[users.get_indexer(test.user_id), items.index.get_indexer(test.item_id)] = True

    def recall_at_20(scores: np.ndarray) -> float:
        top = np.argpartition(-np.where(seen_mask, -np.inf, scores), 20, axis=1)[:, :20]
        hits = np.take_along_axis(truth, top, axis=1).sum(axis=1)
        return float(np.mean(hits / np.minimum(truth.sum(axis=1), 20)))

    most_popular = recall_at_20(np.broadcast_to(popularity, seen_mask.shape))
    category_aware = recall_at_20(share[:, category_code] * popularity)
    assert most_popular > 5 * 20 / len(items)
    assert category_aware > 1.3 * most_popular


def test_catalog_text_prices_and_names(shop: SyntheticShop) -> None:
    items = shop.frames.items
    assert items.category.nunique() == 20 and items.brand.nunique() <= 60
    assert (items.price > 0).all() and np.allclose(items.price % 1, 0.99)
    assert all(brand in title for brand, title in zip(items.brand, items.title, strict=True))
    assert all(category in text for category, text in zip(items.category, items.description, strict=True))
    median_price = items.groupby("category").price.median()
    assert median_price.max() > 5 * median_price.min()


def test_names_stay_unique_beyond_the_word_lists() -> None:
    frames = generate_synthetic(SyntheticConfig(n_interactions=2_000, n_items=400, n_categories=30, n_brands=200))
    assert frames.items.category.nunique() == 30
    assert frames.items.groupby("brand").size().index.is_unique
    assert frames.items.brand.str.fullmatch(r"\w+ \w+( \d+)?").all()


@pytest.mark.parametrize(
    "bad",
    [
        dict(n_interactions=0),
        dict(n_items=5),
        dict(new_item_share=1.5),
        dict(new_user_share=1.0),
        dict(taste_concentration=0.0),
        dict(novelty_boost=-1.0),
    ],
)
def test_impossible_configs_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(
    n_interactions=st.integers(1, 3_000),
    n_categories=st.integers(1, 30),
    n_brands=st.integers(1, 160),
    n_days=st.integers(1, 40),
    new_user_share=st.floats(0.0, 0.95),
    new_item_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_small_shop_is_consistent(
    n_interactions: int,
    n_categories: int,
    n_brands: int,
    n_days: int,
    new_user_share: float,
    new_item_share: float,
    seed: int,
) -> None:
    config = SyntheticConfig(
        n_interactions=n_interactions,
        n_categories=n_categories,
        n_brands=n_brands,
        n_days=n_days,
        new_user_share=new_user_share,
        new_item_share=new_item_share,
        seed=seed,
    )
    shop = simulate_shop(config)
    log, items = shop.frames.interactions, shop.frames.items
    start, end = _window(config)
    assert len(log) == n_interactions and log.ts.is_monotonic_increasing
    assert (log.ts >= start).all() and (log.ts < end).all()
    release = pd.Series(shop.item_release.to_numpy(), index=items.item_id)
    assert (log.ts.to_numpy() >= release.reindex(log.item_id).to_numpy()).all()
    assert log.user_id.isin(shop.frames.users.user_id).all()
    assert items.category.nunique() == n_categories


def test_one_million_rows_smoke() -> None:
    frames = generate_synthetic(SyntheticConfig(n_interactions=1_000_000, seed=11))
    log = frames.interactions
    assert len(log) == 1_000_000 and log.ts.is_monotonic_increasing
    assert log.item_id.nunique() > 0.8 * len(frames.items)
    assert log.user_id.nunique() > 0.8 * len(frames.users)
