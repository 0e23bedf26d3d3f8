"""What the profile writer reads (a user's recent history, the catalog) and what it writes (a profile).

DynLLM asks an LLM for several facets of a user -- the kind of customer, interests, favoured
categories and brands, a one-sentence summary -- and embeds each facet separately. Every bound
here is deliberate: constrained decoding only guarantees a valid *prefix* of the schema, so short
strings and short lists are what make a complete JSON object fit in a small token budget, and
categories/brands are enums of catalog values so a facet can always be joined back to the catalog.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from grec_dagster.data.schema import CATEGORY_SEPARATOR

# Grammar compile time grows with every string bound (the 120-character summary is most of it).
PHRASE_CHARS = 32
SEGMENT_CHARS = 40
SUMMARY_CHARS = 120
MAX_CATEGORIES = 3
MAX_BRANDS = 3
MAX_INTERESTS = 4
DEFAULT_MAX_EVENTS = 10
"""Recent events per prompt. Each costs ~30 prompt tokens, and computed prompt tokens outnumber
generated ones ~4 to 1 at 10 events, so this is the main knob on CPU cost. Raise it on a GPU."""

Phrase = Annotated[str, StringConstraints(min_length=1, max_length=PHRASE_CHARS)]


@dataclass(frozen=True)
class HistoryEvent:
    """One interaction as the LLM sees it; `category` may hold several values joined by "|"."""

    ts: datetime
    title: str
    category: str | None
    brand: str | None

    @property
    def categories(self) -> list[str]:
        if not self.category:
            return []
        return [part.strip() for part in self.category.split(CATEGORY_SEPARATOR) if part.strip()]


@dataclass(frozen=True)
class UserHistory:
    user_id: str
    events: tuple[HistoryEvent, ...]

    def most_recent(self, max_events: int) -> UserHistory:
        """The last `max_events` events, oldest first: prompts are short and recency matters most."""
        ordered = sorted(self.events, key=lambda event: event.ts)
        return UserHistory(self.user_id, tuple(ordered[-max_events:]) if max_events > 0 else ())

    def digest(self) -> str:
        """sha256 of a canonical serialization of the events, sorted by time (then text): equal histories,
        equal digests, across processes and machines (no Python `hash`, no dict order, no locale)."""
        rows = [[event.ts.isoformat(), event.title, event.category, event.brand] for event in self.events]
        rows.sort(key=lambda row: [field or "" for field in row])
        canonical = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Catalog:
    """The closed vocabularies a profile may name; anything else is rejected."""

    categories: list[str]
    brands: list[str]


class UserProfile(BaseModel):
    """The facets of one user. Field order is generation order: catalog facets first, free text last,
    so a profile cut short by the token budget loses the end of its summary, not its categories."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    categories: list[str] = Field(max_length=MAX_CATEGORIES)
    brands: list[str] = Field(max_length=MAX_BRANDS)
    interests: list[Phrase] = Field(max_length=MAX_INTERESTS)
    crowd_segment: str = Field(min_length=1, max_length=SEGMENT_CHARS)
    summary: str = Field(min_length=1, max_length=SUMMARY_CHARS)


LIST_LIMITS: dict[str, int] = {"categories": MAX_CATEGORIES, "brands": MAX_BRANDS, "interests": MAX_INTERESTS}
TEXT_LIMITS: dict[str, int] = {"crowd_segment": SEGMENT_CHARS, "summary": SUMMARY_CHARS}


def profile_json_schema(catalog: Catalog) -> dict[str, Any]:
    """The JSON schema the decoder is constrained to, for this catalog.

    Categories and brands become enums of catalog values (a catalog without brands admits only an
    empty brand list); a profile must name at least one interest, and one category when the catalog
    has any. Pydantic's titles are dropped: they cost grammar states and mean nothing to the model.
    """
    properties = {name: _untitled(spec) for name, spec in UserProfile.model_json_schema()["properties"].items()}
    properties["categories"] = _enum_list(catalog.categories, MAX_CATEGORIES, min_items=1)
    properties["brands"] = _enum_list(catalog.brands, MAX_BRANDS, min_items=0)
    properties["interests"]["minItems"] = 1
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _enum_list(values: list[str], max_items: int, min_items: int) -> dict[str, Any]:
    if not values:
        return {"type": "array", "maxItems": 0}
    return {"type": "array", "items": {"enum": sorted(set(values))}, "minItems": min_items, "maxItems": max_items}


def _untitled(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _untitled(value) if isinstance(value, dict) else value for key, value in spec.items() if key != "title"
    }


@dataclass(frozen=True)
class CleanedProfile:
    """A profile that passed catalog validation, and what had to be removed or filled to get there."""

    profile: UserProfile
    corrections: tuple[str, ...]


def clean_profile(data: Mapping[str, Any], catalog: Catalog, fallback: UserProfile) -> CleanedProfile:
    """Validate a decoded profile against the catalog, keeping what is valid and saying why the rest went.

    Values outside the catalog, duplicates, blanks, non-text and surplus items are dropped; text is
    reduced to printable characters, single spaces and its length bound. A facet that is missing or
    ends up empty (brands may be empty; categories may be when the catalog has none) is taken from
    `fallback`, a profile derived from the history, so the result always validates.
    """
    corrections = [f"{key}: unknown field, dropped" for key in data if key not in UserProfile.model_fields]
    vocabularies = {"categories": set(catalog.categories), "brands": set(catalog.brands), "interests": None}
    may_be_empty = {"categories": not catalog.categories, "brands": True, "interests": False}
    values: dict[str, Any] = {}
    for name, limit in LIST_LIMITS.items():
        kept = _clean_list(name, data.get(name), vocabularies[name], limit, corrections)
        if name not in data or (not kept and not may_be_empty[name]):
            corrections.append(f"{name}: missing, taken from the history")
            kept = list(getattr(fallback, name))
        values[name] = kept
    for name, limit in TEXT_LIMITS.items():
        text = _clean_text(name, data.get(name), limit, corrections)
        if not text:
            corrections.append(f"{name}: missing, taken from the history")
            text = getattr(fallback, name)
        values[name] = text
    return CleanedProfile(UserProfile(**values), tuple(corrections))


def _clean_list(name: str, raw: Any, vocabulary: set[str] | None, limit: int, corrections: list[str]) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        corrections.append(f"{name}: not a list, dropped")
        return []
    kept: list[str] = []
    for value in raw:
        text = _clean_text(name, value, PHRASE_CHARS, corrections) if vocabulary is None else value
        if not isinstance(text, str) or not text:
            corrections.append(f"{name}: blank or non-text value {value!r}, dropped")
        elif vocabulary is not None and text not in vocabulary:
            corrections.append(f"{name}: {text!r} is not in the catalog, dropped")
        elif text in kept:
            corrections.append(f"{name}: duplicate {text!r}, dropped")
        elif len(kept) == limit:
            corrections.append(f"{name}: more than {limit} values, {text!r} dropped")
        else:
            kept.append(text)
    return kept


def _clean_text(name: str, raw: Any, limit: int, corrections: list[str]) -> str:
    """Printable characters, single spaces, at most `limit` characters; "" if no letter or digit is left."""
    if not isinstance(raw, str):
        return ""
    printable = "".join(char for char in raw if char.isspace() or unicodedata.category(char)[0] != "C")
    if printable != raw:
        corrections.append(f"{name}: control characters removed")
    text = " ".join(printable.split())
    if not any(char.isalnum() for char in text):
        return ""
    if len(text) > limit:
        corrections.append(f"{name}: longer than {limit} characters, cut")
        text = text[:limit].rstrip()
    return text
