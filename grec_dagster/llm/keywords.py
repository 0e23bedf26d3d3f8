"""Catalog keywords: the phrases of item text that name a kind of item, so a profile's interests
can be chosen from words the catalog really uses instead of being invented by a small model.

A keyword is a phrase of one to three words of an item's title or description (a release year,
the item's own brand and category names cut out) that

- recurs: at least `MIN_KEYWORD_ITEMS` items use it;
- names a kind of item: at least `KEYWORD_PURITY` of those items share one category, and at least
  `KEYWORD_LIFT` times the share of the catalog in that category (a model name or a filler word
  spreads over the whole catalog, or follows its largest category; "trail shoe", "Star Trek" do not);
- is not a fragment: a phrase always seen inside one longer keyword is left to that keyword;
- has no word that on its own spreads over the catalog (a model name such as "Aero" would otherwise
  make "Aero baby carrier" a keyword next to "baby carrier");
- starts and ends with a content word (not in `STOPWORDS`), and a single word has at least three letters.

On MovieLens-100K (titles only) that leaves franchise and title words ("Star Trek", "Batman");
on the synthetic shop, product nouns and selling points ("running shoe", "breathable mesh").
Phrases are compared in `normalize`d form; a keyword keeps the spelling the catalog uses most.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

MIN_KEYWORD_ITEMS = 3
KEYWORD_PURITY = 0.6
KEYWORD_LIFT = 2.0
MAX_KEYWORD_WORDS = 3
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at back be because been before being below
    between both but by can could did do does doing down during each even ever every few for from further get
    got had has have having he her here hers herself him himself his how i if in into is it it's its itself just
    least let like made make many may me more most much must my myself never new no nor not now of off often on
    once one only or other our ours ourselves out over own per same she should so some such than that that's the
    their theirs them themselves then there these they this those through to too under until up upon us very was
    we were what when where which while who whom why will with would yet you your yours yourself""".split()
)
"""Words too common to start or end a keyword: English function words (as in the usual stopword lists)."""
YEAR_SUFFIX = re.compile(r"\s*\(\d{4}\)\s*$")
WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
"""A word, keeping inner apostrophes and hyphens: "Sci-Fi", "Children's"."""
CLAUSE_BREAK = re.compile(r"[:;,.!?()\[\]/|\"&]+")


def words(text: str) -> list[str]:
    return WORD.findall(text)


def normalize(text: str) -> str:
    """The comparable form of a phrase: lower case words, single spaces, no trailing release year."""
    return " ".join(word.casefold() for word in words(YEAR_SUFFIX.sub("", text)))


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether the normalized `phrase` occurs in `text` as whole words."""
    needle = normalize(phrase)
    return bool(needle) and f" {needle} " in f" {normalize(text)} "


@dataclass(frozen=True)
class CatalogItem:
    """The text of one item that keywords are read from."""

    title: str
    description: str | None
    categories: tuple[str, ...]
    brand: str | None


def clauses(item: CatalogItem) -> list[list[str]]:
    """Runs of words between punctuation, with the item's own brand and category names cut out."""
    text = YEAR_SUFFIX.sub("", item.title) + ". " + (item.description or "")
    for name in (item.brand, *item.categories):
        if name:
            text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", ".", text, flags=re.IGNORECASE)
    return [found for part in CLAUSE_BREAK.split(text) if (found := words(part))]


def phrases(clause: list[str]) -> Iterator[tuple[str, ...]]:
    """Every run of one to `MAX_KEYWORD_WORDS` words that starts and ends with a content word."""
    for start in range(len(clause)):
        for end in range(start + 1, min(start + MAX_KEYWORD_WORDS, len(clause)) + 1):
            run = tuple(clause[start:end])
            first, last = run[0].casefold(), run[-1].casefold()
            if first in STOPWORDS or last in STOPWORDS:
                continue
            if len(run) == 1 and (len(first) < 3 or first.isdigit()):
                continue
            yield run


class Keywords:
    """The catalog's keywords, and which of them an item text mentions."""

    def __init__(self, keywords: Iterable[str]) -> None:
        self.by_phrase: dict[str, str] = {normalize(keyword): keyword for keyword in keywords}

    @property
    def vocabulary(self) -> list[str]:
        return list(self.by_phrase.values())

    def found_in(self, text: str) -> list[str]:
        """The keywords `text` mentions as whole words, in the order they appear."""
        tokens = normalize(text).split()
        found: dict[str, None] = {}
        for start in range(len(tokens)):
            for end in range(start + 1, min(start + MAX_KEYWORD_WORDS, len(tokens)) + 1):
                keyword = self.by_phrase.get(" ".join(tokens[start:end]))
                if keyword is not None:
                    found[keyword] = None
        return list(found)


def catalog_keywords(items: Iterable[CatalogItem]) -> Keywords:
    """The keywords of a catalog, by the rules in the module docstring."""
    items_of: dict[str, set[int]] = defaultdict(set)
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    categories_of: list[tuple[str, ...]] = []
    for index, item in enumerate(items):
        categories_of.append(item.categories)
        for clause in clauses(item):
            for run in phrases(clause):
                key = " ".join(word.casefold() for word in run)
                items_of[key].add(index)
                spellings[key][" ".join(run)] += 1
    candidates = {key: found for key, found in items_of.items() if len(found) >= MIN_KEYWORD_ITEMS}
    base = Counter(category for categories in categories_of for category in categories)
    pure = {key: found for key, found in candidates.items() if _names_a_kind(found, categories_of, base)}
    spreading = candidates.keys() - pure.keys()
    pure = {key: found for key, found in pure.items() if not spreading.intersection(key.split())}
    fragments = _fragments(pure)
    return Keywords(spellings[key].most_common(1)[0][0] for key in sorted(pure.keys() - fragments))


def _names_a_kind(found: set[int], categories_of: list[tuple[str, ...]], base: Counter[str]) -> bool:
    """Whether the items using a phrase concentrate in one category (always true without categories)."""
    counts = Counter(category for index in found for category in categories_of[index])
    if not counts:
        return True
    category, count = counts.most_common(1)[0]
    share = count / len(found)
    return share >= KEYWORD_PURITY and share >= KEYWORD_LIFT * base[category] / len(categories_of)


def _fragments(pure: Mapping[str, set[int]]) -> set[str]:
    """Phrases used by exactly the same items as a longer kept phrase that contains them."""
    found = set()
    for key, items in pure.items():
        tokens = key.split()
        for start in range(len(tokens)):
            for end in range(start + 1, len(tokens) + 1):
                inner = " ".join(tokens[start:end])
                if inner != key and pure.get(inner) == items:
                    found.add(inner)
    return found
