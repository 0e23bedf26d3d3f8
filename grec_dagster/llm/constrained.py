"""Constrained decoding: a JSON schema becomes a per-step token mask, so whatever the model
writes is a valid *prefix* of a schema-conforming object -- and, cut short by the token budget,
can be closed mechanically (`close_truncated_json`) instead of being thrown away.

Why xgrammar. We compared the three maintained libraries on this machine (2 shared cores,
SmolLM2's 49k-token vocabulary, the profile schema with an 18-genre catalog and with a
300-category / 2,000-brand one). xgrammar (C++ pushdown automaton with a token-mask cache; the
structured-output engine of vLLM and SGLang) compiles the profile schema in ~4 s, almost all of it
the bounded strings -- a second catalog reuses them and compiles in 0.3 s -- then masks in
0.02-0.3 ms per token, keeps one matcher per row (so rows can leave a batch early), and supports every keyword we rely
on (enum, minLength/maxLength, minItems/maxItems, fixed separators). lm-format-enforcer (a pure
Python character-level parser) supports the same keywords but masks in ~2 ms per token *per
sequence* -- ~30 ms a step at batch 16, on top of the model's own decode step -- and its
transformers integration (0.11.3) does not import under transformers 5 (`PreTrainedTokenizerBase`
moved). outlines (outlines-core, Rust) compiles the schema into one regular expression indexed
against the vocabulary: 6.5 s for the small catalog, 10 s and a 59k-character regex for the large
one, ~1 ms per token through its Python `Guide`; the `outlines` package itself is not installed.
xgrammar is the fastest at both ends and the only one that works with this stack as is.

That comparison was made on the free-text profile schema. Profiles are now choices (every facet an
enum of the user's own options: `profile_schema.choices_json_schema`), so each user has a grammar of
their own, with no bounded strings: it compiles in ~6-11 ms on this machine (measured per user by
`benchmarks/bench_profiles.py`), against ~4 s for the one free-text schema.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import xgrammar as xgr
from transformers import PreTrainedTokenizerBase

JSON_SEPARATORS = (",", ":")
"""Compact JSON with no free whitespace: fewer tokens, and no way to pad a profile with blanks."""


GRAMMAR_CACHE_BYTES = 256 * 2**20
"""xgrammar keeps compiled grammars up to this size: every user has a grammar of their own (~6 ms to
compile on this machine), so an unbounded cache would grow with the user count."""


class JsonSchemaGrammars:
    """Compiles JSON schemas against one tokenizer's vocabulary; xgrammar caches compiled schemas."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_token_ids: list[int]) -> None:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_limit_bytes=GRAMMAR_CACHE_BYTES)

    def matchers(self, schemas: Sequence[dict[str, Any]]) -> list[xgr.GrammarMatcher]:
        """One fresh matcher per row, for that row's schema: each tracks where its row is in it."""
        return [
            xgr.GrammarMatcher(
                self._compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=JSON_SEPARATORS)
            )
            for schema in schemas
        ]


def close_truncated_json(prefix: str) -> str:
    """Complete JSON text that was cut off, keeping every finished value and a partial string value.

    Meant for prefixes a JSON grammar produced, so the text is valid up to the cut: an unfinished
    string *value* is closed where it stops (a dangling escape is dropped), an unfinished key -- or a
    key still waiting for its value -- is dropped together with the comma before it, and the open
    arrays and objects are closed. Numbers and literals (not in the profile schema) count as finished
    only once a `,`, `]` or `}` follows them.
    """
    stack: list[str] = []
    expecting_key: list[bool] = []
    safe_end, safe_stack = 0, []
    in_string = is_key = False
    escape_from: int | None = None
    escape_left = 0
    for position, char in enumerate(prefix):
        if in_string:
            if escape_from is not None:
                escape_left = 4 if char == "u" and position == escape_from + 1 else escape_left - 1
                if escape_left == 0:
                    escape_from = None
            elif char == "\\":
                escape_from, escape_left = position, 1
            elif char == '"':
                in_string = False
                if not is_key:
                    safe_end, safe_stack = position + 1, list(stack)
            continue
        if char == '"':
            in_string = True
            is_key = bool(stack) and stack[-1] == "{" and expecting_key[-1]
        elif char in "{[":
            stack.append(char)
            expecting_key.append(char == "{")
            safe_end, safe_stack = position + 1, list(stack)
        elif char in "}]":
            stack.pop()
            expecting_key.pop()
            safe_end, safe_stack = position + 1, list(stack)
        elif char == ",":
            safe_end, safe_stack = position, list(stack)
            if stack[-1] == "{":
                expecting_key[-1] = True
        elif char == ":":
            expecting_key[-1] = False
    if in_string and not is_key:
        text = prefix if escape_from is None else prefix[:escape_from]
        return text.rstrip("\ufffd") + '"' + _closers(stack)
    return prefix[:safe_end] + _closers(safe_stack)


def _closers(stack: list[str]) -> str:
    return "".join("}" if opener == "{" else "]" for opener in reversed(stack))
