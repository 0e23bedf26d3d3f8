"""Write one profile per user: options, prompt, constrained batched generation, repair, summary.

Every user gets a valid `UserProfile` whose every value is true of them, whatever the model does.
Each user's grammar admits only their own options, so each completion is a valid prefix of a
choice among them; a completion cut short by the token budget is closed mechanically; a facet that
is still missing takes the user's first options; and the summary is composed from the chosen
facets and the user's attributes rather than generated (a 135M model's free sentences were prompt
echoes, and the ~30 tokens they cost are saved). `status` says which of these happened, so a run
can report how much of its output the model actually chose.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from grec_dagster.llm.backends import Generation, ProfileBackend
from grec_dagster.llm.constrained import close_truncated_json
from grec_dagster.llm.profile_schema import (
    CHOSEN_FIELDS,
    DEFAULT_MAX_EVENTS,
    MAX_BRANDS,
    MAX_CATEGORIES,
    MAX_INTERESTS,
    SUMMARY_CHARS,
    UserHistory,
    UserProfile,
    choices_json_schema,
    clean_choices,
    clean_text,
)
from grec_dagster.llm.prompting import PromptTemplate, load_prompt
from grec_dagster.llm.vocabulary import Catalog, ProfileRequest, profile_requests


class ProfileStatus(StrEnum):
    GENERATED = "generated"
    """The completion parsed and every value was one of the user's options."""
    REPAIRED = "repaired"
    """Closed after the token budget ran out, or cleaned: values dropped, facets filled from the options."""
    FALLBACK = "fallback"
    """Nothing usable was generated; the profile is the user's first options."""


@dataclass(frozen=True)
class ProfileResult:
    user_id: str
    history_hash: str
    """Digest of the request (recent events, attributes, options) the profile was written from; the cache key."""
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
    requests = profile_requests(histories, catalog, max_events)
    generations = backend.generate(
        [template.messages(request) for request in requests],
        [choices_json_schema(request.options) for request in requests],
    )
    return [_result(request, generation) for request, generation in zip(requests, generations, strict=True)]


def _result(request: ProfileRequest, generation: Generation) -> ProfileResult:
    data, closed = _decode(generation.text)
    if data is None or not data.keys() & set(CHOSEN_FIELDS):
        profile, status, corrections = (
            history_profile(request),
            ProfileStatus.FALLBACK,
            ("no profile in the completion",),
        )
    else:
        cleaned = clean_choices(data, request.options)
        profile, corrections = _profile(request, cleaned.values), cleaned.corrections
        if closed:
            corrections = ("cut short by the token budget, closed", *corrections)
        status = ProfileStatus.REPAIRED if corrections else ProfileStatus.GENERATED
    return ProfileResult(
        user_id=request.user_id,
        history_hash=request.digest(),
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


def history_profile(request: ProfileRequest) -> UserProfile:
    """The user's first options -- most frequent categories and brands, keywords and most recent titles,
    nearest segment: the stand-in when the model wrote nothing usable, or when no model ran."""
    options = request.options
    chosen = {
        "categories": list(options.categories[:MAX_CATEGORIES]),
        "brands": list(options.brands[:MAX_BRANDS]),
        "crowd_segment": options.segments[0],
        "interests": options.interests[:MAX_INTERESTS],
    }
    return _profile(request, chosen)


def _profile(request: ProfileRequest, chosen: dict[str, Any]) -> UserProfile:
    return UserProfile(**chosen, summary=compose_summary(request.history.attributes, chosen))


def compose_summary(attributes: Sequence[tuple[str, str]], chosen: dict[str, Any]) -> str:
    """One sentence of true facts, in the model's order: who the user is, what they buy most and from
    whom, what they like. Interests are left off from the end while the sentence is too long."""
    parts = [", ".join(f"{name} {value}" for name, value in attributes)]
    if chosen["categories"]:
        parts.append("mostly " + _and(chosen["categories"]))
    if chosen["brands"]:
        parts.append("from " + _and(chosen["brands"]))
    interests = list(chosen["interests"])
    while True:
        liked = ["likes " + _and(interests)] if interests else []
        sentence = "; ".join(part for part in [*parts, *liked] if part)
        if len(sentence) < SUMMARY_CHARS or not interests:
            break
        interests.pop()
    return clean_text(sentence[:1].upper() + sentence[1:] + ".", SUMMARY_CHARS) if sentence else "No history yet."


def _and(values: Sequence[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]
