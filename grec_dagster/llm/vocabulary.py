"""The closed vocabularies a profile may name (the catalog's categories, brands, keywords and the
crowd segments), and each user's options drawn from them: what a profile request holds.

A request is everything the prompt and the grammar show about one user -- their recent events,
their attributes and their options -- so its digest is the profile cache key: a user is profiled
again exactly when something the model would see has changed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import pandas as pd

from grec_dagster.data.schema import CATEGORY_SEPARATOR
from grec_dagster.llm.keywords import CatalogItem, Keywords, catalog_keywords, normalize
from grec_dagster.llm.profile_schema import (
    INTEREST_CHARS,
    MAX_BRANDS,
    MAX_CATEGORIES,
    MAX_KEYWORD_OPTIONS,
    MIN_THEME_ITEMS,
    ProfileOptions,
    UserHistory,
)
from grec_dagster.llm.segments import CrowdSegments, fit_segments


@dataclass(frozen=True)
class Catalog:
    """The closed vocabularies a profile may name; anything else is rejected."""

    categories: list[str]
    brands: list[str]
    keywords: Keywords
    segments: CrowdSegments
    titles: frozenset[str]
    """Every catalog title, `normalize`d: an interest naming one is grounded."""
    descriptions: Mapping[str, str]
    """Item id -> description, for the items that have one: keywords are found there too."""


def with_none(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as Python objects, a missing value as None (pandas' NA is not falsy, None is)."""
    return frame.astype(object).where(frame.notna(), None)


def catalog_items(items: pd.DataFrame) -> list[CatalogItem]:
    """The `items` table's rows as keyword sources."""
    return [
        CatalogItem(
            title=str(row.title or row.item_id),
            description=row.description,
            categories=tuple(_split(row.category)),
            brand=row.brand,
        )
        for row in with_none(items).itertuples()
    ]


def catalog_categories(items: pd.DataFrame) -> list[str]:
    return sorted({category for value in with_none(items)["category"] for category in _split(value)})


def build_catalog(items: pd.DataFrame, segments: CrowdSegments) -> Catalog:
    """The vocabularies of an `items` table (item_id, title, category, brand, description)."""
    frame = with_none(items)
    brands = sorted({str(brand) for brand in frame["brand"] if brand})
    return Catalog(
        categories=catalog_categories(items),
        brands=brands,
        keywords=catalog_keywords(catalog_items(items)),
        segments=segments,
        titles=frozenset(normalize(str(title)) for title in frame["title"] if title),
        descriptions={
            str(item_id): str(text)
            for item_id, text in zip(frame["item_id"], frame["description"], strict=True)
            if text
        },
    )


def catalog_for(items: pd.DataFrame, histories: Sequence[UserHistory], seed: int = 0) -> Catalog:
    """A catalog whose segments are fitted on `histories` now (the warehouse keeps a fitted one: `segment_cache`)."""
    return build_catalog(items, fit_segments(histories, catalog_categories(items), seed))


def _split(value: object) -> list[str]:
    if not value:
        return []
    return [part.strip() for part in str(value).split(CATEGORY_SEPARATOR) if part.strip()]


@dataclass(frozen=True)
class ProfileRequest:
    """One user as the profile writer sees them: recent events, attributes, options."""

    history: UserHistory
    """The `max_events` most recent events, oldest first."""
    options: ProfileOptions

    @property
    def user_id(self) -> str:
        return self.history.user_id

    def digest(self) -> str:
        """sha256 of a canonical serialization of events (sorted by time, then text), attributes and
        options: equal requests, equal digests, across processes and machines (no Python `hash`)."""
        rows = [[event.ts.isoformat(), event.title, event.category, event.brand] for event in self.history.events]
        rows.sort(key=lambda row: [field or "" for field in row])
        canonical = json.dumps(
            {"events": rows, "attributes": self.history.attributes, "options": self.options.__dict__},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def profile_requests(histories: Sequence[UserHistory], catalog: Catalog, max_events: int) -> list[ProfileRequest]:
    """Each user's request: their `max_events` most recent events, the attributes that describe them
    (those the segments use: no zip codes or ids), and their options (segments are placed by the
    whole history, the rest by the recent events the prompt shows)."""
    segments = catalog.segments.options(histories)
    described = {encoding.name for encoding in catalog.segments.attributes}
    requests = []
    for history, nearest in zip(histories, segments, strict=True):
        facts = tuple((name, value) for name, value in history.attributes if name in described)
        recent = replace(history.most_recent(max_events), attributes=facts)
        requests.append(ProfileRequest(recent, _options(recent, catalog, nearest)))
    return requests


def _options(recent: UserHistory, catalog: Catalog, segments: list[str]) -> ProfileOptions:
    known_categories, known_brands = set(catalog.categories), set(catalog.brands)
    categories = by_frequency(c for event in recent.events for c in event.categories if c in known_categories)
    brands = by_frequency(event.brand for event in recent.events if event.brand in known_brands)
    texts = {
        event.title: f"{event.title}. {catalog.descriptions.get(event.item_id or '', '')}" for event in recent.events
    }
    keywords = Counter(keyword for text in texts.values() for keyword in catalog.keywords.found_in(text))
    themes = [keyword for keyword, count in keywords.most_common() if count >= MIN_THEME_ITEMS][:MAX_KEYWORD_OPTIONS]
    titles = dict.fromkeys(event.title for event in reversed(recent.events) if len(event.title) <= INTEREST_CHARS)
    return ProfileOptions(
        categories=tuple(categories[: 2 * MAX_CATEGORIES]),
        brands=tuple(brands[: 2 * MAX_BRANDS]),
        keywords=tuple(themes),
        titles=tuple(titles),
        segments=tuple(segments),
    )


def by_frequency(values: Iterable[str]) -> list[str]:
    """Distinct values, most frequent first (ties in first-seen order)."""
    return [value for value, _ in Counter(values).most_common()]
