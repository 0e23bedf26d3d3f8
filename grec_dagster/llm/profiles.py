"""Write one profile per user: prompt, constrained batched generation, repair, catalog validation.

Every user gets a valid `UserProfile`, whatever the model does. The grammar makes each completion
a valid prefix of the schema; a completion cut short by the token budget is closed mechanically;
values the catalog does not know are dropped; and a facet that is still missing is derived from
the history itself (most frequent categories and brands, most recent titles). `status` says which
of these happened, so a run can report how much of its output the model actually wrote.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from grec_dagster.llm.backends import Generation, ProfileBackend
from grec_dagster.llm.constrained import close_truncated_json
from grec_dagster.llm.profile_schema import (
    DEFAULT_MAX_EVENTS,
    MAX_BRANDS,
    MAX_CATEGORIES,
    MAX_INTERESTS,
    PHRASE_CHARS,
    SEGMENT_CHARS,
    SUMMARY_CHARS,
    Catalog,
    UserHistory,
    UserProfile,
    clean_profile,
    profile_json_schema,
)
from grec_dagster.llm.prompting import PromptTemplate, load_prompt


class ProfileStatus(StrEnum):
    GENERATED = "generated"
    """The completion parsed and passed validation untouched."""
    REPAIRED = "repaired"
    """Closed after the token budget ran out, or cleaned: values dropped, fields filled from history."""
    FALLBACK = "fallback"
    """Nothing usable was generated; the whole profile is derived from the history."""


@dataclass(frozen=True)
class ProfileResult:
    user_id: str
    history_hash: str
    """Digest of the (truncated) history the profile was written from; the cache key."""
    profile: UserProfile
    raw_text: str
    status: ProfileStatus
    corrections: tuple[str, ...]
    prompt_tokens: int
    cached_tokens: int
    new_tokens: int


def generate_profiles(
    histories: Sequence[UserHistory],
    catalog: Catalog,
    backend: ProfileBackend,
    prompt: PromptTemplate | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> list[ProfileResult]:
    """One validated profile per history, in order; each history is cut to its `max_events` most recent."""
    template = prompt or load_prompt()
    recent = [history.most_recent(max_events) for history in histories]
    generations = backend.generate([template.messages(history) for history in recent], profile_json_schema(catalog))
    return [_result(history, generation, catalog) for history, generation in zip(recent, generations, strict=True)]


def _result(history: UserHistory, generation: Generation, catalog: Catalog) -> ProfileResult:
    fallback = history_profile(history, catalog)
    data, closed = _decode(generation.text)
    if data is None or not data.keys() & UserProfile.model_fields.keys():
        profile, status, corrections = fallback, ProfileStatus.FALLBACK, ("no profile in the completion",)
    else:
        cleaned = clean_profile(data, catalog, fallback)
        profile, corrections = cleaned.profile, cleaned.corrections
        if closed:
            corrections = ("cut short by the token budget, closed", *corrections)
        status = ProfileStatus.REPAIRED if corrections else ProfileStatus.GENERATED
    return ProfileResult(
        user_id=history.user_id,
        history_hash=history.digest(),
        profile=profile,
        raw_text=generation.text,
        status=status,
        corrections=corrections,
        prompt_tokens=generation.prompt_tokens,
        cached_tokens=generation.cached_tokens,
        new_tokens=generation.new_tokens,
    )


def _decode(text: str) -> tuple[dict[str, Any] | None, bool]:
    """The JSON object in a completion, and whether it had to be closed first."""
    for candidate, closed in ((text, False), (close_truncated_json(text), True)):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        return (data, closed) if isinstance(data, dict) else (None, closed)
    return None, True


def history_profile(history: UserHistory, catalog: Catalog) -> UserProfile:
    """A plain profile read off the history: the stand-in for any facet the model failed to write."""
    known_categories, known_brands = set(catalog.categories), set(catalog.brands)
    category_counts = Counter(c for event in history.events for c in event.categories if c in known_categories)
    brand_counts = Counter(event.brand for event in history.events if event.brand in known_brands)
    top_categories = [category for category, _ in category_counts.most_common(MAX_INTERESTS)]
    recent_titles = [event.title for event in reversed(history.events)]
    interests = top_categories or [title[:PHRASE_CHARS].strip() for title in recent_titles[:MAX_INTERESTS]]
    segment = "buyer of " + " and ".join(top_categories[:2]) if top_categories else "occasional buyer"
    summary = "Recently: " + "; ".join(recent_titles) if recent_titles else "No purchases yet."
    return UserProfile(
        categories=top_categories[:MAX_CATEGORIES],
        brands=[brand for brand, _ in brand_counts.most_common(MAX_BRANDS)],
        interests=[interest for interest in interests if interest],
        crowd_segment=segment[:SEGMENT_CHARS].strip(),
        summary=summary[:SUMMARY_CHARS].strip(),
    )
