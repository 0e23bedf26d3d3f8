"""Prompt templates as versioned files, and the rendering of a user's history into chat messages.

A template lives in `prompts/<name>.txt` with a `[system]` and a `[user]` section and `$placeholders`
(string.Template, so JSON braces need no escaping). Its version is the name plus a digest of the
text, so editing a template without renaming it still invalidates cached profiles.

Item text comes from the catalog and may say anything, so it enters the prompt only as data:
one JSON object per line inside a <history> block, with `<`, `>` and `&` escaped so no item can
close the block or open a tag of its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from string import Template

from grec_dagster.llm.profile_schema import MAX_BRANDS, MAX_CATEGORIES, MAX_INTERESTS, UserHistory

DEFAULT_PROMPT = "profile_v1"

ChatMessages = list[dict[str, str]]


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    system: str
    user: str

    def messages(self, history: UserHistory) -> ChatMessages:
        """The chat for one user; placeholders are the history block and the schema's list bounds."""
        values = {
            "history": render_history(history),
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


def _data_line(title: str, categories: list[str], brand: str | None) -> str:
    item: dict[str, object] = {"title": title, "categories": categories}
    if brand:
        item["brand"] = brand
    encoded = json.dumps(item, ensure_ascii=False)
    return encoded.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
