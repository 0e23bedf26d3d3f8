"""Profile fidelity: does each facet of a profile say something true about its user? (issue 18)

Phrases are compared in `keywords.normalize`d form (lower case words, no trailing release year).
Per facet, over all profiled users (micro-averaged: every value counts once):

- **grounded** (interests, brands): the value is a catalog term -- a category, brand, keyword,
  title or segment name -- or occurs as whole words in the text (title, categories, brand,
  description) of one of the user's own items.
- **debris** (every facet): a value that is not grounded, once every verbatim piece of the user's
  own data and of the catalog's terms is cut out of it, still holds markup (any of ``{ } [ ] < > "
  \\ # ` `` or an HTML entity), a word that names the task instead of the user (`META_WORDS`:
  "JSON", "prompt", "instructions", ...), or a prompt echo: `ECHO_WORDS` consecutive words, not all
  stopwords, that also follow each other in the prompt's instructions. A value copied from the
  catalog is data, whatever characters it holds.
- **agreement** (categories): precision and recall against the user's most frequent categories in
  the recent events the prompt showed: the top `MAX_CATEGORIES` by count, ties at the last place
  included; recall is over min(`MAX_CATEGORIES`, that many).
- **segments**: the share of profiles whose segment is in the pipeline's segment vocabulary, the
  share whose named attributes are the user's own ("gender F" for a woman), the share whose segment
  is the user's first option, and the number of distinct segments.
- **summaries**: the share that state at least one true fact: one of the user's titles (of two or
  more words, or one of five or more letters), categories or brands as whole words, or an
  attribute (its value as a whole word, a number only right after the attribute's name).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from grec_dagster.llm.keywords import STOPWORDS, contains_phrase, normalize, words
from grec_dagster.llm.profile_schema import MAX_CATEGORIES, UserHistory, UserProfile
from grec_dagster.llm.vocabulary import Catalog

MARKUP = re.compile(r"""[{}\[\]<>"\\#`]|&[a-z]+;""")
META_WORDS = frozenset(
    {"json", "prompt", "instruction", "instructions", "schema", "sentence", "placeholder", "assistant"}
)
ECHO_WORDS = 3
SAMPLES = 5
LIST_FACETS = ("categories", "brands", "interests")
TEXT_FACETS = ("crowd_segment", "summary")


@dataclass(frozen=True)
class Share:
    hits: int
    total: int

    @property
    def value(self) -> float | None:
        """hits / total; None when there was nothing to count (e.g. brands in a catalog without any)."""
        return self.hits / self.total if self.total else None

    def __add__(self, other: Share) -> Share:
        return Share(self.hits + other.hits, self.total + other.total)


NONE = Share(0, 0)


@dataclass(frozen=True)
class FidelityReport:
    profiles: int
    interests_grounded: Share
    brands_grounded: Share
    brands_in_history: Share
    """Stricter than grounded: the brand is one of the user's own."""
    debris: dict[str, Share]
    category_precision: Share
    category_recall: Share
    segments_in_vocabulary: Share
    segments_true_of_user: Share
    segments_nearest: Share
    distinct_segments: int
    summaries_with_fact: Share
    samples: list[dict] = field(default_factory=list)

    @property
    def any_debris(self) -> Share:
        return sum(self.debris.values(), NONE)

    def metrics(self) -> dict[str, float | int | None]:
        """Every number of the report by name: the table rows, and an asset check's metadata."""
        shares = {
            "interests_grounded": self.interests_grounded,
            "brands_grounded": self.brands_grounded,
            "brands_in_history": self.brands_in_history,
            **{f"debris_{facet}": share for facet, share in self.debris.items()},
            "debris_any_facet": self.any_debris,
            "category_precision": self.category_precision,
            "category_recall": self.category_recall,
            "segments_in_vocabulary": self.segments_in_vocabulary,
            "segments_true_of_user": self.segments_true_of_user,
            "segments_nearest": self.segments_nearest,
            "summaries_with_fact": self.summaries_with_fact,
        }
        return {
            "profiles": self.profiles,
            **{name: _rounded(share.value) for name, share in shares.items()},
            "distinct_segments": self.distinct_segments,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(frozen=True)
class FidelityThresholds:
    """Below these a profile run deserves a look; the defaults are issue 18's targets."""

    min_interests_grounded: float = 0.95
    max_debris: float = 0.0
    min_segments_in_vocabulary: float = 1.0
    min_category_precision: float = 0.9
    min_summaries_with_fact: float = 0.95


def fidelity_warnings(report: FidelityReport, thresholds: FidelityThresholds = FidelityThresholds()) -> list[str]:
    """One sentence per metric past its threshold; empty when the run meets them all."""
    checks = [
        ("interests grounded", report.interests_grounded, thresholds.min_interests_grounded, True),
        ("values with debris", report.any_debris, thresholds.max_debris, False),
        ("segments from the vocabulary", report.segments_in_vocabulary, thresholds.min_segments_in_vocabulary, True),
        ("category precision", report.category_precision, thresholds.min_category_precision, True),
        ("summaries with a true fact", report.summaries_with_fact, thresholds.min_summaries_with_fact, True),
    ]
    found = []
    for label, share, limit, at_least in checks:
        value = share.value
        if value is not None and (value < limit if at_least else value > limit):
            found.append(
                f"{label}: {value:.1%} ({share.hits}/{share.total}), {'below' if at_least else 'above'} {limit:.0%}"
            )
    return found


def profile_fidelity(
    profiles: Mapping[str, UserProfile],
    histories: Sequence[UserHistory],
    catalog: Catalog,
    instructions: str,
    max_events: int,
    seed: int = 0,
) -> FidelityReport:
    """Measure every profiled user's facets against their history (see the module docstring).
    `instructions` is the prompt's own text (`PromptTemplate.instructions`), for echoes."""
    judge = FidelityJudge(catalog, instructions)
    profiled = [history for history in histories if history.user_id in profiles]
    nearest = catalog.segments.options(profiled, count=1)
    totals: Counter[str] = Counter()
    debris = {facet: NONE for facet in (*LIST_FACETS, *TEXT_FACETS)}
    interests = brands = owned = precision = recall = in_vocabulary = is_true = is_nearest = facts = NONE
    for history, (closest,) in zip(profiled, nearest, strict=True):
        profile = profiles[history.user_id]
        user = UserFacts(history, catalog)
        interests += Share(sum(judge.grounded(value, user) for value in profile.interests), len(profile.interests))
        brands += Share(sum(judge.grounded(value, user) for value in profile.brands), len(profile.brands))
        owned += Share(sum(value in user.brands for value in profile.brands), len(profile.brands))
        for facet in LIST_FACETS:
            values = getattr(profile, facet)
            debris[facet] += Share(sum(judge.debris(value, user) for value in values), len(values))
        for facet in TEXT_FACETS:
            debris[facet] += Share(int(judge.debris(getattr(profile, facet), user)), 1)
        top = most_frequent_categories(history.most_recent(max_events))
        hits = len(set(profile.categories) & top)
        precision += Share(hits, len(profile.categories))
        wanted = min(MAX_CATEGORIES, len(top))
        recall += Share(min(hits, wanted), wanted)
        in_vocabulary += Share(int(profile.crowd_segment in judge.segments), 1)
        is_true += Share(int(catalog.segments.fits(profile.crowd_segment, history)), 1)
        is_nearest += Share(int(profile.crowd_segment == closest), 1)
        facts += Share(int(states_a_fact(profile.summary, user)), 1)
        totals[profile.crowd_segment] += 1
    return FidelityReport(
        profiles=len(profiled),
        interests_grounded=interests,
        brands_grounded=brands,
        brands_in_history=owned,
        debris=debris,
        category_precision=precision,
        category_recall=recall,
        segments_in_vocabulary=in_vocabulary,
        segments_true_of_user=is_true,
        segments_nearest=is_nearest,
        distinct_segments=len(totals),
        summaries_with_fact=facts,
        samples=_samples(profiles, profiled, max_events, seed),
    )


def most_frequent_categories(history: UserHistory) -> set[str]:
    """The top `MAX_CATEGORIES` categories by count, with every category tied at the last place."""
    counts = Counter(category for event in history.events for category in event.categories).most_common()
    if not counts:
        return set()
    cut = counts[min(MAX_CATEGORIES, len(counts)) - 1][1]
    return {category for category, count in counts if count >= cut}


class UserFacts:
    """What is true of one user: the texts of their items, their categories, brands and attributes."""

    def __init__(self, history: UserHistory, catalog: Catalog) -> None:
        self.item_texts = [
            " | ".join(
                part
                for part in (
                    event.title,
                    *event.categories,
                    event.brand,
                    catalog.descriptions.get(event.item_id or ""),
                )
                if part
            )
            for event in history.events
        ]
        self.titles = {event.title for event in history.events}
        self.categories = {category for event in history.events for category in event.categories}
        self.brands = {event.brand for event in history.events if event.brand}
        self.attributes = history.attributes
        self.verbatim = verbatim([*self.titles, *self.categories, *self.brands, *(v for _, v in self.attributes)])


class FidelityJudge:
    """The catalog-wide vocabularies and the prompt's words, prepared once for every user."""

    def __init__(self, catalog: Catalog, instructions: str) -> None:
        self.segments = set(catalog.segments.vocabulary)
        self.terms = {
            normalize(term)
            for term in (*catalog.categories, *catalog.brands, *catalog.keywords.vocabulary, *self.segments)
        } | catalog.titles
        self.verbatim = verbatim([*catalog.categories, *catalog.brands, *catalog.keywords.vocabulary, *self.segments])
        prompt_words = [word.casefold() for word in words(instructions)]
        self.echoes = {
            tuple(prompt_words[start : start + ECHO_WORDS]) for start in range(len(prompt_words) - ECHO_WORDS + 1)
        }

    def grounded(self, value: str, user: UserFacts) -> bool:
        return normalize(value) in self.terms or any(contains_phrase(text, value) for text in user.item_texts)

    def debris(self, value: str, user: UserFacts) -> bool:
        if self.grounded(value, user):
            return False
        pieces = [piece for part in user.verbatim.split(value) for piece in self.verbatim.split(part)]
        return any(self._debris_piece(piece) for piece in pieces if piece.strip())

    def _debris_piece(self, piece: str) -> bool:
        if MARKUP.search(piece):
            return True
        lowered = [word.casefold() for word in words(piece)]
        if META_WORDS.intersection(lowered):
            return True
        return any(
            tuple(lowered[start : start + ECHO_WORDS]) in self.echoes
            and not STOPWORDS.issuperset(lowered[start : start + ECHO_WORDS])
            for start in range(len(lowered) - ECHO_WORDS + 1)
        )


def verbatim(phrases: Sequence[str]) -> re.Pattern[str]:
    """Matches any of `phrases` as whole words, case-insensitive, the longest first (so "Star Wars (1977)"
    is cut out before "Star"); splitting a text by it leaves what is not copied data."""
    alternatives = sorted({re.escape(phrase) for phrase in phrases if phrase}, key=len, reverse=True)
    return re.compile(rf"(?<!\w)(?:{'|'.join(alternatives) or '(?!)'})(?!\w)", re.IGNORECASE)


def states_a_fact(summary: str, user: UserFacts) -> bool:
    """Whether the summary names one of the user's titles, categories, brands or attributes."""
    titles = [title for title in user.titles if len(normalize(title).split()) > 1 or len(normalize(title)) >= 5]
    if any(contains_phrase(summary, phrase) for phrase in (*titles, *user.categories, *user.brands)):
        return True
    lowered = f" {normalize(summary)} "
    for name, value in user.attributes:
        number = re.fullmatch(r"-?\d+(\.\d+)?", value) is not None
        if f" {normalize(name)} {normalize(value)} " in lowered or (
            not number and len(value) >= 3 and contains_phrase(summary, value)
        ):
            return True
    return False


def _samples(
    profiles: Mapping[str, UserProfile], profiled: Sequence[UserHistory], max_events: int, seed: int
) -> list[dict]:
    """`SAMPLES` seeded users' profiles beside the facts they were written from, to read."""
    chosen = random.Random(seed).sample(list(profiled), min(SAMPLES, len(profiled)))
    return [
        {
            "user_id": history.user_id,
            "attributes": dict(history.attributes),
            "recent_titles": [event.title for event in reversed(history.most_recent(max_events).events)],
            "top_categories": sorted(most_frequent_categories(history.most_recent(max_events))),
            **profiles[history.user_id].model_dump(),
        }
        for history in chosen
    ]
