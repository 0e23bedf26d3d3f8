"""Prompt templates as versioned files, and the rendering of a profile request into chat messages.

A template lives in `prompts/<name>.txt` with a `[system]` and a `[user]` section and `$placeholders`
(string.Template, so JSON braces need no escaping). Its version is the name plus a digest of the
text, so editing a template without renaming it still invalidates cached profiles.

Item text comes from the catalog and may say anything, so it enters the prompt only as data:
JSON inside a <history> block, with `<`, `>` and `&` escaped so no item can close the block or
open a tag of its own. `profile_v3` shows one JSON object: the user's attributes, their options
(categories and brands most frequent first, nearest segments, keywords) and their titles, most
recent first -- every value the grammar lets the model choose, in the order a small model that
copies the first values should copy them. (`profile_v1` and `profile_v2` asked for free text:
issue 18 measured what a 135M model wrote there.)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from string import Template

from grec_dagster.llm.profile_schema import MAX_BRANDS, MAX_CATEGORIES, MAX_INTERESTS
from grec_dagster.llm.vocabulary import ProfileRequest

DEFAULT_PROMPT = "profile_v3"

ChatMessages = list[dict[str, str]]


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    system: str
    user: str

    def messages(self, request: ProfileRequest) -> ChatMessages:
        """The chat for one user; a template uses any of these placeholders."""
        options = request.options
        values = {
            "customer": as_data(dict(request.history.attributes)),
            "categories": as_data(options.categories),
            "brands": as_data(options.brands),
            "segments": as_data(options.segment_keys),
            "keywords": as_data(options.keywords),
            "titles": ",\n".join(as_data(title) for title in options.titles),
            "max_categories": MAX_CATEGORIES,
            "max_brands": MAX_BRANDS,
            "max_interests": MAX_INTERESTS,
        }
        return [
            {"role": "system", "content": Template(self.system).substitute(values)},
            {"role": "user", "content": Template(self.user).substitute(values)},
        ]

    def instructions(self) -> str:
        """The template's own words, without placeholders or the data block: what a profile must not echo."""
        text = f"{self.system}\n{self.user}"
        text = re.sub(r"<history>.*?</history>", " ", text, flags=re.DOTALL)
        return re.sub(r"\$\w+", " ", text)


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


def as_data(value: object) -> str:
    """Compact JSON text (12 prompt tokens fewer per user than with spaces) that cannot close or open a
    tag in the prompt."""
    encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return encoded.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
