"""Prompt templates as versioned files, and the rendering of a user's history into chat messages.

A template lives in `prompts/<name>.txt` with a `[system]` and a `[user]` section and `$placeholders`
(string.Template, so JSON braces need no escaping). Its version is the name plus a digest of the
text, so editing a template without renaming it still invalidates cached profiles.

Item text comes from the catalog and may say anything, so it enters the prompt only as data:
JSON inside a <history> block, with `<`, `>` and `&` escaped so no item can close the block or
open a tag of its own. `profile_v1` shows one JSON object per event (title, categories, brand);
`profile_v2` (the default) shows one JSON object for the whole history: its categories and brands
most frequent first, then the titles: 184 tokens of its own per MovieLens-100K user against 288
(`benchmarks/bench_profiles.py`), and it hands a small model the "most frequent" facets it would
otherwise have to count.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from string import Template

from grec_dagster.llm.profile_schema import MAX_BRANDS, MAX_CATEGORIES, MAX_INTERESTS, UserHistory

DEFAULT_PROMPT = "profile_v2"

ChatMessages = list[dict[str, str]]


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    system: str
    user: str

    def messages(self, history: UserHistory) -> ChatMessages:
        """The chat for one user; a template uses any of these placeholders."""
        values = {
            "history": render_history(history),
            "titles": render_titles(history),
            "categories_by_frequency": as_data(by_frequency(c for event in history.events for c in event.categories)),
            "brands_by_frequency": as_data(by_frequency(event.brand for event in history.events if event.brand)),
            "max_categories": MAX_CATEGORIES,
            "max_brands": MAX_BRANDS,
            "max_interests": MAX_INTERESTS,
        }
        return [
            {"role": "system", "content": Template(self.system).substitute(values)},
            {"role": "user", "content": Template(self.user).substitute(values)},
        ]


def load_prompt(name: str = DEFAULT_PROMPT) -> PromptTemplate:
    text = resources.files("grec_dagster.llm").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")
    system, user = _split_sections(text, name)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return PromptTemplate(name=name, version=f"{name}@{digest}", system=system, user=user)


def _split_sections(text: str, name: str) -> tuple[str, str]:
    head, marker, rest = text.partition("[system]\n")
    system, user_marker, user = rest.partition("\n[user]\n")
    if head.strip() or not marker or not user_marker:
        raise ValueError(f"prompt {name!r} must be a [system] section followed by a [user] section")
    return system.strip(), user.strip()


def render_history(history: UserHistory) -> str:
    """One line per event, oldest first, each a JSON object that cannot break out of the block."""
    return "\n".join(_data_line(event.title, event.categories, event.brand) for event in history.events)


def render_titles(history: UserHistory) -> str:
    """The titles as JSON array elements, one per line, oldest first."""
    return ",\n".join(as_data(event.title) for event in history.events)


def by_frequency(values: Iterable[str]) -> list[str]:
    """Distinct values, most frequent first (ties in first-seen order)."""
    return [value for value, _ in Counter(values).most_common()]


def _data_line(title: str, categories: list[str], brand: str | None) -> str:
    item: dict[str, object] = {"title": title, "categories": categories}
    if brand:
        item["brand"] = brand
    return as_data(item)


def as_data(value: object) -> str:
    """JSON text that cannot close or open a tag in the prompt."""
    encoded = json.dumps(value, ensure_ascii=False)
    return encoded.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
