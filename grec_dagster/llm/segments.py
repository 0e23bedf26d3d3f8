"""Crowd segments: clusters of users by category mix and demographics, named from the data, so a
profile's `crowd_segment` is picked from a closed vocabulary of true descriptions instead of being
written by a model that echoes its prompt.

Features of a user: the square roots of their category shares over their whole history (the
Hellinger embedding: compositions compare by Euclidean distance), then, scaled by
`ATTRIBUTE_WEIGHT`, a one-hot of each usable attribute -- a text attribute with 2 to
`MAX_ATTRIBUTE_LEVELS` values (gender, occupation, region), or a numeric one cut at its quartiles
(age). Either must repeat -- at most `MAX_DISTINCT_SHARE` of the users' values distinct -- so
free-form attributes (zip codes, names, ids) are left out. The users are clustered by k-means
(k-means++ starts, `RESTARTS` seeded restarts, the lowest inertia kept) into
`segment_count(users)` clusters.

A cluster is named by what is true of most of it: each attribute value held by at least
`DOMINANT_SHARE` of its members ("age 18-24", "gender M", "student"), then the one or two
categories it over-buys most relative to everyone ("into Sci-Fi and Action"). Clusters that end
up with the same name are one segment. A user's options are the names of their nearest clusters
among those whose named attributes are the user's own (a woman is not offered "gender M, ..."
because her tastes are near that cluster's); only if none is, the nearest clusters at all.
Everything is a pure function of the histories, their attributes and the seed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from grec_dagster.llm.profile_schema import UserHistory

ATTRIBUTE_WEIGHT = 0.35
"""Distance between two levels of one attribute, over sqrt(2); category mixes differ by ~0.3-0.8."""
MAX_ATTRIBUTE_LEVELS = 24
NUMERIC_BANDS = 4
MAX_DISTINCT_SHARE = 0.5
DOMINANT_SHARE = 0.6
MIN_TASTE_SHARE = 0.08
"""A category names a cluster only if it is at least this share of the cluster's events."""
MAX_SEGMENTS = 16
SEGMENT_OPTIONS = 3
RESTARTS = 4
ITERATIONS = 100
EVERYONE = "all customers"


def segment_count(users: int) -> int:
    """sqrt(users / 4), between 2 and `MAX_SEGMENTS`: 15 for MovieLens' 943 users, 4 for 50."""
    return max(2, min(MAX_SEGMENTS, round(math.sqrt(users / 4))))


@dataclass(frozen=True)
class AttributeEncoding:
    """How one attribute becomes a one-hot block: its levels, or for a number its band edges."""

    name: str
    levels: tuple[str, ...]
    edges: tuple[float, ...] = ()
    """Numeric attributes: the upper edge of every band but the last; text attributes: empty."""

    def level(self, value: str | None) -> int | None:
        if value is None:
            return None
        if not self.edges:
            return self.levels.index(value) if value in self.levels else None
        number = _number(value)
        return None if number is None else int(np.searchsorted(self.edges, number, side="left"))

    def describe(self, level: int) -> str:
        """A short true phrase: a word as it is ("student"), a code or a band with its name ("gender M")."""
        value = self.levels[level]
        return value if not self.edges and len(value) >= 3 and value.isalpha() else f"{self.name} {value}"


@dataclass(frozen=True)
class CrowdSegments:
    """Fitted clusters and their names; `options` places any user among them."""

    categories: tuple[str, ...]
    attributes: tuple[AttributeEncoding, ...]
    centroids: tuple[tuple[float, ...], ...]
    names: tuple[str, ...]
    """One per centroid; clusters with equal names are one segment."""
    traits: tuple[tuple[int | None, ...], ...]
    """Per centroid, the level of each attribute its name states (None: the name says nothing of it)."""

    @property
    def vocabulary(self) -> list[str]:
        """The distinct segment names, in cluster order."""
        return list(dict.fromkeys(self.names))

    def features(self, histories: Sequence[UserHistory]) -> np.ndarray:
        return _features(histories, self.categories, self.attributes)

    def options(self, histories: Sequence[UserHistory], count: int = SEGMENT_OPTIONS) -> list[list[str]]:
        """For each user, the names of the `count` nearest segments, nearest first."""
        if not histories:
            return []
        centroids = np.array(self.centroids)
        distances = _squared_distances(self.features(histories), centroids)
        found = []
        for history, row in zip(histories, np.argsort(distances, axis=1, kind="stable"), strict=True):
            fitting = [cluster for cluster in row if self._fits(cluster, history)] or list(row)
            found.append(list(dict.fromkeys(self.names[cluster] for cluster in fitting))[:count])
        return found

    def fits(self, name: str, history: UserHistory) -> bool:
        """Whether what segment `name` says of its members' attributes is true of this user."""
        return any(self._fits(cluster, history) for cluster, named in enumerate(self.names) if named == name)

    def _fits(self, cluster: int, history: UserHistory) -> bool:
        known = dict(history.attributes)
        return all(
            level is None or encoding.level(known.get(encoding.name)) == level
            for encoding, level in zip(self.attributes, self.traits[cluster], strict=True)
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CrowdSegments:
        data = json.loads(text)
        return cls(
            categories=tuple(data["categories"]),
            attributes=tuple(
                AttributeEncoding(item["name"], tuple(item["levels"]), tuple(item["edges"]))
                for item in data["attributes"]
            ),
            centroids=tuple(tuple(row) for row in data["centroids"]),
            names=tuple(data["names"]),
            traits=tuple(tuple(row) for row in data["traits"]),
        )


def fit_segments(histories: Sequence[UserHistory], categories: Sequence[str], seed: int = 0) -> CrowdSegments:
    """Cluster and name the users, as the module docstring says."""
    encodings = tuple(_encodings(histories))
    features = _features(histories, tuple(categories), encodings)
    if not len(features):
        return CrowdSegments(
            tuple(categories), encodings, ((0.0,) * features.shape[1],), (EVERYONE,), ((None,) * len(encodings),)
        )
    distinct = len(np.unique(features, axis=0))
    centroids, labels = _kmeans(features, min(segment_count(len(histories)), distinct), seed)
    shares = _category_shares(histories, tuple(categories))
    kept = [cluster for cluster in range(len(centroids)) if (labels == cluster).any()]
    traits = [_traits(labels == cluster, histories, encodings) for cluster in kept]
    names = [
        _name(labels == cluster, trait, shares, encodings, tuple(categories))
        for cluster, trait in zip(kept, traits, strict=True)
    ]
    return CrowdSegments(
        categories=tuple(categories),
        attributes=encodings,
        centroids=tuple(tuple(float(x) for x in centroids[cluster]) for cluster in kept),
        names=tuple(names),
        traits=tuple(traits),
    )


def _encodings(histories: Sequence[UserHistory]) -> list[AttributeEncoding]:
    values: dict[str, list[str]] = {}
    for history in histories:
        for name, value in history.attributes:
            values.setdefault(name, []).append(value)
    found = []
    for name, seen in values.items():
        numbers = [_number(value) for value in seen]
        distinct = sorted(set(seen))
        if len(distinct) > MAX_DISTINCT_SHARE * len(seen):
            continue
        if all(number is not None for number in numbers) and len(distinct) > NUMERIC_BANDS:
            found.append(_bands(name, np.array(numbers, dtype=float)))
        elif 2 <= len(distinct) <= MAX_ATTRIBUTE_LEVELS:
            found.append(AttributeEncoding(name, tuple(distinct)))
    return found


def _bands(name: str, numbers: np.ndarray) -> AttributeEncoding:
    """Quartile bands, each labelled by the smallest and largest value the users in it have."""
    edges = tuple(float(edge) for edge in np.unique(np.quantile(numbers, np.linspace(0, 1, NUMERIC_BANDS + 1)[1:-1])))
    band = np.searchsorted(edges, numbers, side="left")
    labels = tuple(
        f"{_format(numbers[band == index].min())}-{_format(numbers[band == index].max())}"
        for index in range(len(edges) + 1)
    )
    return AttributeEncoding(name, labels, edges)


def _format(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:.3g}"


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _category_shares(histories: Sequence[UserHistory], categories: tuple[str, ...]) -> np.ndarray:
    column = {category: index for index, category in enumerate(categories)}
    shares = np.zeros((len(histories), len(categories)))
    for row, history in enumerate(histories):
        counts = Counter(c for event in history.events for c in event.categories if c in column)
        total = sum(counts.values())
        for category, count in counts.items():
            shares[row, column[category]] = count / total
    return shares


def _features(
    histories: Sequence[UserHistory], categories: tuple[str, ...], encodings: tuple[AttributeEncoding, ...]
) -> np.ndarray:
    blocks = [np.sqrt(_category_shares(histories, categories))]
    for encoding in encodings:
        block = np.zeros((len(histories), len(encoding.levels)))
        for row, history in enumerate(histories):
            level = encoding.level(dict(history.attributes).get(encoding.name))
            if level is not None:
                block[row, level] = ATTRIBUTE_WEIGHT
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def _squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=-1)


def _kmeans(points: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm from k-means++ starts; the restart with the lowest inertia wins."""
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(RESTARTS):
        centroids = _kmeans_plus_plus(points, clusters, rng)
        labels = np.full(len(points), -1)
        for _ in range(ITERATIONS):
            distances = _squared_distances(points, centroids)
            updated = distances.argmin(axis=1)
            if np.array_equal(updated, labels):
                break
            labels = updated
            for cluster in range(clusters):
                members = points[labels == cluster]
                # an emptied cluster restarts at the point farthest from its centroid
                centroids[cluster] = members.mean(axis=0) if len(members) else points[distances.min(axis=1).argmax()]
        inertia = float(_squared_distances(points, centroids)[np.arange(len(points)), labels].sum())
        if best is None or inertia < best[0]:
            best = (inertia, centroids.copy(), labels.copy())
    assert best is not None
    return best[1], best[2]


def _kmeans_plus_plus(points: np.ndarray, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centroids = [points[rng.integers(len(points))]]
    for _ in range(1, clusters):
        nearest = _squared_distances(points, np.array(centroids)).min(axis=1)
        total = nearest.sum()
        pick = rng.choice(len(points), p=nearest / total) if total > 0 else rng.integers(len(points))
        centroids.append(points[pick])
    return np.array(centroids, dtype=float)


def _traits(
    members: np.ndarray, histories: Sequence[UserHistory], encodings: tuple[AttributeEncoding, ...]
) -> tuple[int | None, ...]:
    """Per attribute, the level at least `DOMINANT_SHARE` of the members have (None if none has)."""
    rows = np.flatnonzero(members)
    found = []
    for encoding in encodings:
        levels = Counter(encoding.level(dict(histories[row].attributes).get(encoding.name)) for row in rows)
        level, count = levels.most_common(1)[0]
        found.append(level if level is not None and count >= DOMINANT_SHARE * len(rows) else None)
    return tuple(found)


def _name(
    members: np.ndarray,
    traits: tuple[int | None, ...],
    shares: np.ndarray,
    encodings: tuple[AttributeEncoding, ...],
    categories: tuple[str, ...],
) -> str:
    parts = [encoding.describe(level) for encoding, level in zip(encodings, traits, strict=True) if level is not None]
    rows = np.flatnonzero(members)
    mix, everyone = shares[rows].mean(axis=0), shares.mean(axis=0)
    lift = np.divide(mix, everyone, out=np.zeros_like(mix), where=everyone > 0)
    liked = [index for index in np.argsort(-lift, kind="stable") if mix[index] >= MIN_TASTE_SHARE][:2]
    if liked:
        parts.append("into " + " and ".join(categories[index] for index in liked))
    return ", ".join(parts) or EVERYONE
