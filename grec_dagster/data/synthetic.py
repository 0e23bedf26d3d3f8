"""A seeded synthetic shop log whose structure a recommender can learn, at any size, offline.

The generative story, one *visit* at a time (all visits are drawn at once, vectorized):

1. time t: a day weighted by the weekly rhythm and by the activity of the users signed up
   by then, an hour from a daily profile, a uniform instant within the hour;
2. user u: among the users signed up by day(t), with probability proportional to a
   log-normal activity (heavy tail: a few users do most of the clicking);
3. phase p: every user has two taste phases and drifts from the first to the second,
   P(p = 1) = w(t) = taste_drift * t / n_days, so a user's taste is the mixture
   (1 - w(t)) * theta_u0 + w(t) * theta_u1 and moves slowly across the window;
4. category c ~ theta_up, where theta_up ~ Dirichlet(taste_concentration * n_categories * m_u)
   is sparse and its mean m_u is the catalog's category mass tilted by age band and region;
5. brand b among those selling c (a brand sells in 1-3 categories; mass(c, b) is the summed
   popularity of its items there):  P(b | u, c) ∝ mass(c, b) * (1 - λ + λ * n_brands * beta_ub),
   with λ = brand_loyalty and a sparse, stable brand taste beta_u ~ Dirichlet(brand_concentration);
   loyalty crosses categories, which a category-aware popularity baseline cannot see;
6. item i of brand b in category c:  P(i | c, b, t) ∝ pop_i * novelty_i(t) * [release_i <= t], with
   pop_i = rank_i ** -popularity_exponent (Zipf) and
   novelty_i(t) = 1 + novelty_boost * exp(-(t - release_i) / novelty_days);
   a share of items is released during the window (cold start);
7. funnel: the view becomes a cart with probability `cart_rate`, a cart becomes a purchase
   with probability `purchase_rate`, each a few minutes later; a purchase's value is the price.

Users carry `signup_day`: days since `start` (negative: signed up before the window).
Every categorical draw goes through one binary search over side-by-side cumulative weights
(`_draw`), so generation costs O(n log n) with no Python loop per row, user or item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from grec_dagster.data.schema import SourceFrames

_CATEGORIES: tuple[tuple[str, float, str, str], ...] = (
    ("Running Shoes", 95, "running shoe|trail shoe|racing flat", "breathable mesh|cushioned sole|reflective trim"),
    ("Coffee", 14, "espresso blend|single-origin beans|cold brew pack", "dark roast|notes of cocoa|fair trade"),
    ("Tea", 9, "green tea|herbal infusion|black tea", "loose leaf|organic|caffeine free"),
    (
        "Headphones",
        120,
        "wireless headphones|earbuds|studio headset",
        "noise cancelling|30-hour battery|foldable design",
    ),
    ("Backpacks", 70, "daypack|travel backpack|laptop bag", "water resistant|padded straps|hidden pocket"),
    ("Cookware", 55, "frying pan|saucepan|dutch oven", "non-stick coating|cast iron|oven safe"),
    ("Skincare", 25, "face cream|serum|cleanser", "fragrance free|hyaluronic acid|for sensitive skin"),
    ("Books", 16, "novel|cookbook|travel guide", "hardcover|illustrated|award winning"),
    ("Board Games", 35, "strategy game|party game|jigsaw puzzle", "2-6 players|family friendly|quick to learn"),
    ("Toys", 22, "building set|plush toy|toy car", "ages 3+|battery free|washable"),
    ("Pet Supplies", 20, "dog food|cat toy|pet bed", "grain free|chew resistant|machine washable"),
    ("Gardening", 18, "seed kit|pruning shears|planter", "rust proof|frost hardy|self watering"),
    ("Yoga", 30, "yoga mat|yoga block|resistance band", "non-slip grip|eco cork|extra thick"),
    ("Cycling", 45, "bike light|helmet|cycling jersey", "USB rechargeable|lightweight|high visibility"),
    ("Camping", 80, "tent|sleeping bag|camp stove", "3-season|packs small|windproof"),
    ("Watches", 150, "smartwatch|dive watch|field watch", "sapphire glass|water resistant|leather strap"),
    ("Jackets", 110, "rain jacket|down jacket|fleece", "waterproof|recycled fabric|packable hood"),
    ("Lighting", 40, "desk lamp|LED strip|floor lamp", "dimmable|warm white|smart control"),
    ("Snacks", 5, "protein bar|trail mix|dark chocolate", "high protein|no added sugar|vegan"),
    ("Stationery", 12, "notebook|fountain pen|planner", "dotted pages|refillable|recycled paper"),
    ("Phone Accessories", 20, "phone case|fast charger|screen protector", "shockproof|magnetic|slim fit"),
    ("Baby Care", 25, "baby wipes|bottle set|baby carrier", "hypoallergenic|BPA free|ergonomic"),
    ("Fragrance", 60, "eau de parfum|body mist|cologne", "woody notes|long lasting|citrus fresh"),
    ("Kitchen Gadgets", 25, "chef knife|garlic press|kitchen scale", "stainless steel|dishwasher safe|precise"),
)
"""Category name, median price, product nouns | selling points: the vocabulary of titles."""

_BRAND_PREFIXES = tuple("Nordic Urban Golden Blue Iron Silver Wild Bright North Green Crimson Lucky".split())
_BRAND_SUFFIXES = tuple("Trail Works Leaf Peak Harbor Fox Craft Field Stone Wave Pine Studio".split())
_MODEL_NAMES = tuple("Aero Classic Pro Lite Max One Prime Flex Nova Core Edge Terra".split())

_AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
_AGE_BAND_SHARES = (0.14, 0.27, 0.22, 0.17, 0.12, 0.08)
_REGIONS = ("North", "South", "East", "West", "Central")
_REGION_SHARES = (0.22, 0.24, 0.18, 0.20, 0.16)

_WEEKDAY_WEIGHTS = (1.0, 0.97, 0.98, 1.0, 1.05, 1.15, 1.2)
"""Monday .. Sunday: weekends shop a little more."""
_HOUR_WEIGHTS = (6, 4, 2, 2, 2, 3, 5, 10, 14, 16, 17, 18, 20, 19, 17, 17, 18, 20, 24, 28, 30, 27, 20, 12)
"""Relative load per hour of the day: quiet nights, a lunch bump, an evening peak."""

_EVENTS = ("view", "cart", "purchase")
_CART_DELAY_SECONDS = 120.0
_PURCHASE_DELAY_SECONDS = 300.0
_CATALOG_AGE_DAYS = 365.0
"""Items on sale before the window were released up to this long before it."""
_MEMBERSHIP_DAYS = 730
"""Users present before the window signed up up to this long before it."""

_CACHE_RESIDENT_EDGES = 1 << 16
"""Above this many cumulative weights, `_draw` sorts its targets before searching."""

_DAY_US = 86_400_000_000
_HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, seed and the knobs of the generative story in the module docstring."""

    n_interactions: int = 100_000
    n_users: int | None = None
    """None: n_interactions / 50, at least 50."""
    n_items: int | None = None
    """None: n_interactions / 80, at least 100."""
    n_categories: int = 20
    n_brands: int = 60
    n_days: int = 90
    start: str = "2024-01-01"
    seed: int = 0
    popularity_exponent: float = 0.9
    activity_sigma: float = 1.2
    """Log-normal sigma of user activity; larger means a heavier tail."""
    taste_concentration: float = 0.1
    """Dirichlet alpha per category when the prior is flat; small means few categories per user."""
    attribute_signal: float = 0.5
    """Std of the log tilt that age band and region put on a user's category prior."""
    brand_loyalty: float = 0.5
    """Share of the brand choice driven by the user's own brand taste rather than brand size."""
    brand_concentration: float = 0.1
    """Dirichlet alpha per brand; small means a few favourite brands per user."""
    taste_drift: float = 0.2
    """Weight of the second taste phase at the end of the window."""
    new_item_share: float = 0.2
    novelty_boost: float = 2.0
    novelty_days: float = 14.0
    new_user_share: float = 0.3
    cart_rate: float = 0.12
    purchase_rate: float = 0.4
    price_sigma: float = 0.4
    source: str = "synthetic"

    def __post_init__(self) -> None:
        if min(self.n_interactions, self.n_categories, self.n_brands, self.n_days) < 1:
            raise ValueError("counts must be positive")
        if self.item_count < self.n_categories or self.user_count < 1:
            raise ValueError("need at least one item per category and one user")
        shares = (self.brand_loyalty, self.taste_drift, self.new_item_share, self.cart_rate, self.purchase_rate)
        if not all(0.0 <= share <= 1.0 for share in shares) or not 0.0 <= self.new_user_share < 1.0:
            raise ValueError("shares must lie in [0, 1] (new_user_share in [0, 1))")
        if min(self.taste_concentration, self.brand_concentration, self.novelty_days) <= 0:
            raise ValueError("concentrations and novelty_days must be positive")
        if min(self.novelty_boost, self.price_sigma, self.popularity_exponent, self.activity_sigma) < 0:
            raise ValueError("novelty_boost, price_sigma, popularity_exponent, activity_sigma must be non-negative")

    @property
    def user_count(self) -> int:
        return self.n_users if self.n_users is not None else max(50, self.n_interactions // 50)

    @property
    def item_count(self) -> int:
        return self.n_items if self.n_items is not None else max(100, self.n_interactions // 80)


@dataclass(frozen=True)
class SyntheticShop:
    """The frames plus hidden truth the schema has no column for (tests check against it)."""

    frames: SourceFrames
    item_release: pd.Series
    """When each row of `frames.items` went on sale (datetime64[us]; before `start` for the back catalog)."""


def generate_synthetic(config: SyntheticConfig) -> SourceFrames:
    """The synthetic shop as a data source: interactions sorted by ts, items, users."""
    return simulate_shop(config).frames


def simulate_shop(config: SyntheticConfig) -> SyntheticShop:
    """Generate the shop; catalog, users and log draw from separate streams of the one seed."""
    catalog_rng, user_rng, log_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(3))
    catalog = _make_catalog(config, catalog_rng)
    users = _make_users(config, catalog, user_rng)
    log = _simulate_log(config, catalog, users, log_rng)

    start = _start_us(config)
    item_ids = _ids("i", catalog.category.size)
    user_ids = _ids("u", users.signup_day.size)
    interactions = pd.DataFrame(
        {
            "user_id": _take_strings(user_ids, log.user),
            "item_id": _take_strings(item_ids, log.item),
            "ts": pd.Series(log.ts.view("datetime64[us]")),
            "event": _take_strings(np.array(_EVENTS), log.event),
            "value": log.value,
            "source": _take_strings(np.array([config.source]), np.zeros(log.ts.size, dtype=np.int32)),
            "source_row": np.arange(log.ts.size, dtype=np.int64),
            "positive": pd.Series(np.ones(log.ts.size, dtype=bool), dtype="boolean"),  # views, carts, purchases
        }
    )
    items = pd.DataFrame(
        {
            "item_id": pd.Series(item_ids, dtype="string"),
            "title": pd.Series(catalog.title, dtype="string"),
            "category": _take_strings(catalog.category_names, catalog.category),
            "brand": _take_strings(catalog.brand_names, catalog.brand),
            "description": pd.Series(catalog.description, dtype="string"),
            "price": catalog.price,
        }
    )
    user_frame = pd.DataFrame(
        {
            "user_id": pd.Series(user_ids, dtype="string"),
            "age_band": _take_strings(np.array(_AGE_BANDS), users.age_band),
            "region": _take_strings(np.array(_REGIONS), users.region),
            "signup_day": users.signup_day,
        }
    )
    release_us = start + np.round(catalog.release_day * _DAY_US).astype(np.int64)
    return SyntheticShop(
        frames=SourceFrames(interactions=interactions, items=items, users=user_frame),
        item_release=pd.Series(release_us.view("datetime64[us]"), name="release"),
    )


# --- sampling primitives -------------------------------------------------------------------


def _edges(weights: np.ndarray) -> np.ndarray:
    """Cumulative weights with a leading 0: segment [lo, hi) spans edges[lo] .. edges[hi]."""
    return np.concatenate([[0.0], np.cumsum(weights, dtype=np.float64)])


def _draw(
    rng: np.random.Generator, edges: np.ndarray, lo: np.ndarray | int, hi: np.ndarray | int, size: int
) -> np.ndarray:
    """One index per row from [lo, hi), proportional to the weights behind `edges`.

    Many categorical distributions laid side by side in one weight array are sampled by a
    single binary search: u ~ U(edges[lo], edges[hi]) falls in the interval of index k.
    """
    lo, hi = np.broadcast_to(lo, size), np.broadcast_to(hi, size)
    below = edges[lo]
    target = below + rng.random(size) * (edges[hi] - below)
    if edges.size > _CACHE_RESIDENT_EDGES:
        # Random targets miss the cache at every level of the search; sorted ones sweep the array once.
        by_target = np.argsort(target)
        index = np.empty(size, dtype=np.int64)
        index[by_target] = np.searchsorted(edges, target[by_target], side="right")
    else:
        index = np.searchsorted(edges, target, side="right")
    return np.clip(index - 1, lo, hi - 1)


def _dirichlet_rows(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    """One Dirichlet vector per row of `alpha`.

    Gamma(a) = Gamma(a + 1) * U ** (1 / a), taken in log space: with small alphas plain gamma
    draws underflow to 0 and whole rows would become 0 / 0.
    """
    log_gamma = np.log(rng.standard_gamma(alpha + 1.0)) + np.log1p(-rng.random(alpha.shape)) / alpha
    weights = np.exp(log_gamma - log_gamma.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def _rank_by_row(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """A random permutation of 0..columns-1 in every row: picks k distinct columns as rank < k."""
    return rng.random((rows, columns)).argsort(axis=1).argsort(axis=1)


# --- catalog -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Catalog:
    """Items as parallel arrays, plus the layout used to sample an item inside a (category, brand) pair.

    Items are laid out sorted by (category, brand), so every (category, brand) pair is a
    contiguous segment of `order`; pairs are sorted by category too, so a category's pairs
    are a contiguous segment of the pair arrays.
    """

    category: np.ndarray
    brand: np.ndarray
    popularity: np.ndarray
    release_day: np.ndarray
    price: np.ndarray
    title: pa.Array
    description: pa.Array
    category_names: np.ndarray
    brand_names: np.ndarray
    order: np.ndarray
    pair_lo: np.ndarray
    pair_hi: np.ndarray
    pair_category: np.ndarray
    pair_brand: np.ndarray
    pair_mass: np.ndarray
    """Summed item popularity of each (category, brand) pair: its share of the category's demand."""
    category_pair_lo: np.ndarray
    category_pair_hi: np.ndarray


def _make_catalog(config: SyntheticConfig, rng: np.random.Generator) -> _Catalog:
    n_items, n_categories = config.item_count, config.n_categories
    vocabulary = rng.permutation(len(_CATEGORIES))[np.arange(n_categories) % len(_CATEGORIES)]
    category_names = _numbered(
        np.array([_CATEGORIES[v][0] for v in vocabulary]), np.arange(n_categories) // len(_CATEGORIES)
    )

    category_share = rng.dirichlet(np.full(n_categories, 2.0))
    category = rng.permutation(
        np.concatenate([np.arange(n_categories), rng.choice(n_categories, n_items - n_categories, p=category_share)])
    )
    brand_names, brand = _make_brands(config, category, rng)
    popularity = (rng.permutation(n_items) + 1.0) ** -config.popularity_exponent

    order = np.lexsort((brand, category))
    pair_key = category[order] * config.n_brands + brand[order]
    pair_lo = np.flatnonzero(np.r_[True, pair_key[1:] != pair_key[:-1]])
    pair_hi = np.r_[pair_lo[1:], n_items]
    pair_category, pair_brand = np.divmod(pair_key[pair_lo], config.n_brands)
    categories = np.arange(n_categories)

    median_price = np.array([_CATEGORIES[v][1] for v in vocabulary])[category]
    price = np.floor(median_price * np.exp(config.price_sigma * rng.standard_normal(n_items))) + 0.99
    title, description = _item_text(vocabulary[category], brand_names[brand], category_names[category], rng)
    return _Catalog(
        category=category,
        brand=brand,
        popularity=popularity,
        release_day=_release_days(config, popularity[order], pair_lo, order, rng),
        price=price,
        title=title,
        description=description,
        category_names=category_names,
        brand_names=brand_names,
        order=order,
        pair_lo=pair_lo,
        pair_hi=pair_hi,
        pair_category=pair_category,
        pair_brand=pair_brand,
        pair_mass=np.add.reduceat(popularity[order], pair_lo),
        category_pair_lo=np.searchsorted(pair_category, categories, side="left"),
        category_pair_hi=np.searchsorted(pair_category, categories, side="right"),
    )


def _make_brands(
    config: SyntheticConfig, category: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Brand names, and a brand per item among the brands that sell in its category.

    Each brand sells in 1-3 categories and every category has a brand; bigger brands
    (log-normal size) carry more items.
    """
    n_brands, n_categories = config.n_brands, config.n_categories
    combos = len(_BRAND_PREFIXES) * len(_BRAND_SUFFIXES)
    combo = rng.permutation(combos)[np.arange(n_brands) % combos]
    names = np.strings.add(
        np.strings.add(np.array(_BRAND_PREFIXES)[combo // len(_BRAND_SUFFIXES)], " "),
        np.array(_BRAND_SUFFIXES)[combo % len(_BRAND_SUFFIXES)],
    )
    names = _numbered(names, np.arange(n_brands) // combos)

    sells = _rank_by_row(rng, n_brands, n_categories) < rng.integers(1, 4, size=(n_brands, 1))
    sells[rng.permutation(n_brands)[np.arange(n_categories) % n_brands], np.arange(n_categories)] = True
    weight = (sells.T * rng.lognormal(0.0, 1.0, n_brands)).ravel()
    brand = (
        _draw(rng, _edges(weight), category * n_brands, (category + 1) * n_brands, category.size) - category * n_brands
    )
    return names, brand


def _release_days(
    config: SyntheticConfig,
    sorted_popularity: np.ndarray,
    pair_lo: np.ndarray,
    order: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Release day per item: the back catalog before the window, `new_item_share` during it.

    The most popular item of every (category, brand) pair is back catalog, so every pair a
    visit can pick always has something on sale.
    """
    n_items = order.size
    pair_of = np.repeat(np.arange(pair_lo.size), np.diff(np.r_[pair_lo, n_items]))
    evergreen = sorted_popularity == np.maximum.reduceat(sorted_popularity, pair_lo)[pair_of]
    candidates = order[~evergreen]
    new = rng.choice(candidates, size=min(round(config.new_item_share * n_items), candidates.size), replace=False)
    release = -rng.uniform(0.0, _CATALOG_AGE_DAYS, n_items)
    release[new] = rng.uniform(0.0, config.n_days, new.size)
    return release


def _item_text(
    vocabulary: np.ndarray, brand: np.ndarray, category_name: np.ndarray, rng: np.random.Generator
) -> tuple[pa.Array, pa.Array]:
    """'Nordic Trail Aero running shoe' and a description naming its selling points."""
    nouns = np.array([words[2].split("|") for words in _CATEGORIES])
    features = np.array([words[3].split("|") for words in _CATEGORIES])
    n_items = vocabulary.size
    noun = nouns[vocabulary, rng.integers(0, nouns.shape[1], n_items)]
    first = rng.integers(0, features.shape[1], n_items)
    second = (first + rng.integers(1, features.shape[1], n_items)) % features.shape[1]
    model = np.array(_MODEL_NAMES)[rng.integers(0, len(_MODEL_NAMES), n_items)]

    title = _join(brand, " ", model, " ", noun)
    description = _join(
        np.strings.capitalize(noun),
        " by ",
        brand,
        ": ",
        features[vocabulary, first],
        ", ",
        features[vocabulary, second],
        ". From our ",
        category_name,
        " range.",
    )
    return title, description


def _join(*parts: np.ndarray | str) -> pa.Array:
    """Element-wise concatenation, in Arrow: numpy's fixed-width strings copy every prefix again."""
    return pc.binary_join_element_wise(*(pa.array(p) if isinstance(p, np.ndarray) else p for p in parts), "")


def _numbered(names: np.ndarray, rounds: np.ndarray) -> np.ndarray:
    """Keep names unique when more are needed than the word lists hold: 'Coffee', 'Coffee 2'."""
    suffix = np.where(rounds > 0, np.strings.add(" ", (rounds + 1).astype(str)), "")
    return np.strings.add(names, suffix)


def _ids(prefix: str, count: int) -> np.ndarray:
    """'u000123'-style ids, zero-padded to a common width."""
    width = max(6, len(str(count - 1)))
    return np.strings.add(prefix, np.strings.zfill(np.arange(count).astype(str), width))


def _take_strings(names: np.ndarray, codes: np.ndarray) -> pd.Series:
    """names[codes] as a pyarrow-backed string Series, without a Python string per row."""
    dictionary = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(names))
    return pd.Series(dictionary.cast(pa.large_string()), dtype="string")


# --- users ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Users:
    activity: np.ndarray
    signup_day: np.ndarray
    age_band: np.ndarray
    region: np.ndarray
    taste_edges: np.ndarray
    """Cumulative category tastes, (2 phases, users, categories) flattened: row = phase * users + user."""
    pair_edges: np.ndarray
    """Cumulative brand-choice weights, (users, pairs) flattened: P(b | u, c) is a segment of a row."""


def _make_users(config: SyntheticConfig, catalog: _Catalog, rng: np.random.Generator) -> _Users:
    n_users, n_categories = config.user_count, config.n_categories
    activity = rng.lognormal(0.0, config.activity_sigma, n_users)
    signup_day = -rng.integers(1, _MEMBERSHIP_DAYS + 1, n_users)
    joins = rng.random(n_users) < config.new_user_share
    signup_day[joins] = rng.integers(0, config.n_days, joins.sum())
    age_band = rng.choice(len(_AGE_BANDS), n_users, p=_AGE_BAND_SHARES)
    region = rng.choice(len(_REGIONS), n_users, p=_REGION_SHARES)

    category_mass = np.bincount(catalog.pair_category, weights=catalog.pair_mass, minlength=n_categories)
    log_prior = (
        np.log(category_mass / category_mass.sum())[None, :]
        + rng.normal(0.0, config.attribute_signal, (len(_AGE_BANDS), n_categories))[age_band]
        + rng.normal(0.0, config.attribute_signal, (len(_REGIONS), n_categories))[region]
    )
    prior = np.exp(log_prior - log_prior.max(axis=1, keepdims=True))
    alpha = config.taste_concentration * n_categories * prior / prior.sum(axis=1, keepdims=True)
    taste = np.concatenate([_dirichlet_rows(rng, alpha), _dirichlet_rows(rng, alpha)])

    brand_taste = _dirichlet_rows(rng, np.full((n_users, config.n_brands), config.brand_concentration))
    affinity = (1.0 - config.brand_loyalty) + config.brand_loyalty * config.n_brands * brand_taste[
        :, catalog.pair_brand
    ]
    return _Users(
        activity=activity,
        signup_day=signup_day.astype(np.int64),
        age_band=age_band,
        region=region,
        taste_edges=_edges(taste.ravel()),
        pair_edges=_edges((affinity * catalog.pair_mass).ravel()),
    )


# --- the log -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Log:
    """Rows sorted by ts; user and item are indices into the user and item tables."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    event: np.ndarray
    value: np.ndarray


def _start_us(config: SyntheticConfig) -> int:
    return int(np.datetime64(pd.Timestamp(config.start).to_datetime64(), "us").astype(np.int64))


def _simulate_log(config: SyntheticConfig, catalog: _Catalog, users: _Users, rng: np.random.Generator) -> _Log:
    steps = _funnel_steps(config, rng)
    n_visits = steps.size
    start = _start_us(config)
    ts, user = _visit_times_and_users(config, users, n_visits, rng)
    day = (ts - start) / _DAY_US
    phase = (rng.random(n_visits) < config.taste_drift * day / config.n_days).astype(np.int64)
    pair = _visit_pairs(config, catalog, users, user, phase, rng)
    item = _items_on_sale(config, catalog, catalog.pair_lo[pair], catalog.pair_hi[pair], day, rng)

    carted, bought = steps >= 2, steps >= 3
    cart_ts = ts[carted] + _delay_us(rng, _CART_DELAY_SECONDS, int(carted.sum()))
    purchase_ts = cart_ts[bought[carted]] + _delay_us(rng, _PURCHASE_DELAY_SECONDS, int(bought.sum()))
    all_ts = np.minimum(np.concatenate([ts, cart_ts, purchase_ts]), start + config.n_days * _DAY_US - 1)
    all_item = np.concatenate([item, item[carted], item[bought]])
    all_value = np.concatenate([np.ones(n_visits + cart_ts.size), catalog.price[item[bought]]])
    all_event = np.repeat(np.arange(3, dtype=np.int8), [n_visits, cart_ts.size, purchase_ts.size])

    by_time = np.argsort(all_ts, kind="stable")
    return _Log(
        user=np.concatenate([user, user[carted], user[bought]])[by_time],
        item=all_item[by_time],
        ts=all_ts[by_time],
        event=all_event[by_time],
        value=all_value[by_time],
    )


def _funnel_steps(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Rows per visit (1 view, 2 +cart, 3 +purchase), as many visits as make exactly n_interactions.

    Drawn for n_interactions visits, which is always enough, then cut; the last visit's
    funnel is shortened if it overshoots.
    """
    n = config.n_interactions
    carted = rng.random(n) < config.cart_rate
    bought = carted & (rng.random(n) < config.purchase_rate)
    steps = 1 + carted.astype(np.int8) + bought.astype(np.int8)
    rows = np.cumsum(steps, dtype=np.int64)
    n_visits = int(np.searchsorted(rows, n)) + 1
    steps = steps[:n_visits]
    steps[-1] -= rows[n_visits - 1] - n
    return steps


def _visit_times_and_users(
    config: SyntheticConfig, users: _Users, n_visits: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Visit instants (us) and the visiting users; the load on a day follows who has signed up."""
    start = pd.Timestamp(config.start)
    by_signup = np.argsort(users.signup_day, kind="stable")
    activity_edges = _edges(users.activity[by_signup])
    members = np.searchsorted(users.signup_day[by_signup], np.arange(config.n_days), side="right")
    weekday = (start.dayofweek + np.arange(config.n_days)) % 7
    day_weight = np.array(_WEEKDAY_WEIGHTS)[weekday] * activity_edges[members]

    day = _draw(rng, _edges(day_weight), 0, config.n_days, n_visits)
    hour = _draw(rng, _edges(np.array(_HOUR_WEIGHTS)), 0, len(_HOUR_WEIGHTS), n_visits)
    ts = _start_us(config) + day * _DAY_US + hour * _HOUR_US + rng.integers(0, _HOUR_US, n_visits)
    user = by_signup[_draw(rng, activity_edges, 0, members[day], n_visits)]
    return ts, user


def _visit_pairs(
    config: SyntheticConfig,
    catalog: _Catalog,
    users: _Users,
    user: np.ndarray,
    phase: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """The (category, brand) pair of each visit: a category from the user's current taste, then a brand."""
    n_visits, n_categories, n_pairs = user.size, config.n_categories, catalog.pair_lo.size
    row = phase * users.signup_day.size + user
    category = (
        _draw(rng, users.taste_edges, row * n_categories, (row + 1) * n_categories, n_visits) - row * n_categories
    )
    first = user * n_pairs
    pair = _draw(
        rng,
        users.pair_edges,
        first + catalog.category_pair_lo[category],
        first + catalog.category_pair_hi[category],
        n_visits,
    )
    return pair - first


def _items_on_sale(
    config: SyntheticConfig,
    catalog: _Catalog,
    lo: np.ndarray,
    hi: np.ndarray,
    day: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """An item per visit from its segment, P ∝ pop * novelty(t) * [released by t], by rejection.

    Proposals come from pop * (the item's highest novelty inside the window) and are accepted
    with novelty(t) / that maximum, which is exact and accepts back-catalog items almost always.
    """
    release = catalog.release_day
    peak_novelty = 1.0 + config.novelty_boost * np.exp(np.minimum(release, 0.0) / config.novelty_days)
    proposal_edges = _edges((catalog.popularity * peak_novelty)[catalog.order])
    item = np.empty(lo.size, dtype=np.int64)
    pending = np.arange(lo.size)
    while pending.size:
        candidate = catalog.order[_draw(rng, proposal_edges, lo[pending], hi[pending], pending.size)]
        age = day[pending] - release[candidate]
        novelty = np.where(
            age >= 0, 1.0 + config.novelty_boost * np.exp(-np.maximum(age, 0.0) / config.novelty_days), 0.0
        )
        accepted = rng.random(pending.size) * peak_novelty[candidate] < novelty
        item[pending[accepted]] = candidate[accepted]
        pending = pending[~accepted]
    return item


def _delay_us(rng: np.random.Generator, mean_seconds: float, size: int) -> np.ndarray:
    return np.ceil(rng.exponential(mean_seconds * 1e6, size)).astype(np.int64)
