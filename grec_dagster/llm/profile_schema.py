"""What the profile writer reads (a user's recent history), what it may choose from (their options),
and what it writes (a profile).

DynLLM asks an LLM for several facets of a user -- the kind of customer, interests, favoured
categories and brands, a one-sentence summary -- and embeds each facet separately. A 135M model
asked to *write* those facets wrote prompt echoes and JSON debris (issue 18), so here it only
*chooses*: every generated facet is an enum of the user's own options (their categories and
brands, their titles and the catalog keywords those items use, their nearest crowd segments), and
the summary is composed afterwards from the chosen facets and the user's attributes. Whatever the
model picks is therefore a true statement about the user; a larger model picks better.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from grec_dagster.data.schema import CATEGORY_SEPARATOR

INTEREST_CHARS = 96
"""Longer than any MovieLens title (81 characters); an option longer than this is not offered."""
SEGMENT_CHARS = 96
SUMMARY_CHARS = 240
MAX_CATEGORIES = 3
MAX_BRANDS = 3
MAX_INTERESTS = 4
SEGMENT_KEYS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_KEYWORD_OPTIONS = 6
"""Keyword options per user, beside their titles: more cost prompt tokens and rarely get picked."""
MIN_THEME_ITEMS = 2
"""A keyword is offered to a user when at least this many of their recent items (distinct titles) use
it: a theme of theirs ("Star Trek", "trail shoe"). A word of one title alone ("Black" of "Men in
Black") says less than the title, which is offered anyway."""
DEFAULT_MAX_EVENTS = 10
"""Recent events per prompt. Each costs ~10 prompt tokens, and computed prompt tokens outnumber
generated ones several to one, so this is the main knob on CPU cost. Raise it on a GPU."""


@dataclass(frozen=True)
class HistoryEvent:
    """One interaction as the LLM sees it; `category` may hold several values joined by "|"."""

    ts: datetime
    title: str
    category: str | None
    brand: str | None
    item_id: str | None = None
    """Lets the catalog add the item's description to what its keywords are found in."""

    @property
    def categories(self) -> list[str]:
        if not self.category:
            return []
        return [part.strip() for part in self.category.split(CATEGORY_SEPARATOR) if part.strip()]


@dataclass(frozen=True)
class UserHistory:
    user_id: str
    events: tuple[HistoryEvent, ...]
    attributes: tuple[tuple[str, str], ...] = ()
    """What the users table knows about the user (age, gender, ...), as text, in column order."""
    total_events: int | None = None
    """All the user's training events, of which `events` may hold only the most recent; None: `events`."""

    @property
    def activity(self) -> int:
        return len(self.events) if self.total_events is None else self.total_events

    def most_recent(self, max_events: int) -> UserHistory:
        """The last `max_events` events, oldest first: prompts are short and recency matters most."""
        ordered = sorted(self.events, key=lambda event: event.ts)
        recent = tuple(ordered[-max_events:]) if max_events > 0 else ()
        return UserHistory(self.user_id, recent, self.attributes, self.activity)


@dataclass(frozen=True)
class ProfileOptions:
    """The values one user's generated facets may take, best first."""

    categories: tuple[str, ...]
    brands: tuple[str, ...]
    keywords: tuple[str, ...]
    """Catalog keywords at least `MIN_THEME_ITEMS` of the user's recent items use, most used first."""
    titles: tuple[str, ...]
    """The user's recent titles, most recent first."""
    segments: tuple[str, ...]
    """The user's nearest crowd segments, nearest first; never empty."""

    @property
    def segment_keys(self) -> dict[str, str]:
        """Letter keys ("A", "B", ...) -> segments: the model writes the one-letter key of its choice,
        not the ~15 tokens of a segment name, which the grammar would force one decode step at a time."""
        return dict(zip(SEGMENT_KEYS, self.segments, strict=False))

    @property
    def interests(self) -> list[str]:
        return list(dict.fromkeys((*self.keywords, *self.titles)))

    def as_lists(self) -> dict[str, list[str]]:
        return {"categories": [*self.categories], "brands": [*self.brands], "interests": self.interests}


class UserProfile(BaseModel):
    """The facets of one user. Field order is generation order; the summary is composed, not generated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    categories: list[str] = Field(max_length=MAX_CATEGORIES)
    brands: list[str] = Field(max_length=MAX_BRANDS)
    crowd_segment: str = Field(min_length=1, max_length=SEGMENT_CHARS)
    interests: list[str] = Field(max_length=MAX_INTERESTS)
    summary: str = Field(min_length=1, max_length=SUMMARY_CHARS)


LIST_LIMITS: dict[str, int] = {"categories": MAX_CATEGORIES, "brands": MAX_BRANDS, "interests": MAX_INTERESTS}
CHOSEN_FIELDS = ("categories", "brands", "crowd_segment", "interests")
"""The facets the model generates, in generation order: a completion cut short by the token budget
loses the end of its interests, never its categories or segment."""


def choices_json_schema(options: ProfileOptions) -> dict[str, Any]:
    """The JSON schema one user's completion is constrained to: every value one of their options.

    A list must name at least one value when the user has any option for it, and is empty when they
    have none; the segment is the key of one of the user's nearest segments.
    """
    return {
        "type": "object",
        "properties": {
            "categories": _enum_list(options.categories, MAX_CATEGORIES),
            "brands": _enum_list(options.brands, MAX_BRANDS),
            "crowd_segment": {"enum": list(options.segment_keys)},
            "interests": _enum_list(options.interests, MAX_INTERESTS),
        },
        "required": list(CHOSEN_FIELDS),
        "additionalProperties": False,
    }


def _enum_list(values: Sequence[str], max_items: int) -> dict[str, Any]:
    if not values:
        return {"type": "array", "maxItems": 0}
    return {"type": "array", "items": {"enum": [*values]}, "minItems": 1, "maxItems": max_items}


@dataclass(frozen=True)
class CleanedChoices:
    """A user's chosen facets that passed validation, and what had to be removed or filled to get there."""

    values: dict[str, Any]
    """`CHOSEN_FIELDS` -> chosen values, each one of the user's options (the segment by name)."""
    corrections: tuple[str, ...]


def clean_choices(data: Mapping[str, Any], options: ProfileOptions) -> CleanedChoices:
    """Keep the chosen values that are the user's options, saying why the rest went.

    Values outside the options, duplicates, non-text and surplus items are dropped. A facet that is
    missing, or ends up empty while the user has options for it, takes the user's first options
    instead: their most frequent categories and brands, their keywords and most recent titles,
    their nearest segment.
    """
    corrections = [f"{key}: unknown field, dropped" for key in data if key not in CHOSEN_FIELDS]
    allowed = options.as_lists()
    values: dict[str, Any] = {}
    for name, limit in LIST_LIMITS.items():
        kept = _clean_list(name, data.get(name), allowed[name], limit, corrections)
        if name not in data or (not kept and allowed[name]):
            corrections.append(f"{name}: missing, taken from the history")
            kept = allowed[name][:limit]
        values[name] = kept
    key = data.get("crowd_segment")
    if key not in options.segment_keys:
        corrections.append(f"crowd_segment: {key!r} is not one of the user's segment keys, nearest taken")
    values["crowd_segment"] = options.segment_keys.get(key, options.segments[0])
    return CleanedChoices(values, tuple(corrections))


def _clean_list(name: str, raw: Any, allowed: list[str], limit: int, corrections: list[str]) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        corrections.append(f"{name}: not a list, dropped")
        return []
    kept: list[str] = []
    for value in raw:
        if not isinstance(value, str) or value not in allowed:
            corrections.append(f"{name}: {value!r} is not one of the user's options, dropped")
        elif value in kept:
            corrections.append(f"{name}: duplicate {value!r}, dropped")
        elif len(kept) == limit:
            corrections.append(f"{name}: more than {limit} values, {value!r} dropped")
        else:
            kept.append(value)
    return kept


def clean_text(raw: str, limit: int) -> str:
    """Printable characters, single spaces, at most `limit` characters: catalog text may hold anything."""
    printable = "".join(char for char in raw if char.isspace() or unicodedata.category(char)[0] != "C")
    return " ".join(printable.split())[:limit].rstrip()
