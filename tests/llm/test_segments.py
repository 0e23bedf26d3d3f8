"""Crowd segments: planted groups of users are found and named by what is true of them, the fit is
deterministic, and the warehouse keeps one fit per catalog and users table."""

import random
from dataclasses import replace

import duckdb
import pandas as pd
import pytest

from grec_dagster.llm.segment_cache import crowd_segments
from grec_dagster.llm.segments import CrowdSegments, fit_segments, segment_count
from tests.llm.catalogs import history

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def planted_users(count: int = 120, seed: int = 0) -> list:
    """Two planted crowds: young men who watch Sci-Fi and Action, older women who watch Romance and
    Drama; each with some noise titles, a free-form zip code, and a shared occupation per crowd."""
    rng = random.Random(seed)
    users = []
    for index in range(count):
        young = index % 2 == 0
        liked = ["Sci-Fi", "Action"] if young else ["Romance", "Drama"]
        genres = [rng.choice(liked) if rng.random() < 0.85 else rng.choice(GENRES) for _ in range(12)]
        attributes = [
            ("age", str(rng.randint(18, 24) if young else rng.randint(45, 70))),
            ("gender", "M" if young else "F"),
            ("occupation", "student" if young else rng.choice(["librarian", "doctor", "artist"])),
            ("zip_code", f"{rng.randint(0, 99999):05d}"),
        ]
        users.append(history(f"u{index}", [(f"{g} film {i}", g, None) for i, g in enumerate(genres)], attributes))
    return users


@pytest.fixture(scope="module")
def fitted() -> tuple[list, CrowdSegments]:
    users = planted_users()
    return users, fit_segments(users, GENRES, seed=0)


def test_each_planted_crowd_gets_a_true_name(fitted) -> None:
    users, segments = fitted
    nearest = [options[0] for options in segments.options(users, count=1)]
    young = {name for user, name in zip(users, nearest, strict=True) if dict(user.attributes)["gender"] == "M"}
    older = {name for user, name in zip(users, nearest, strict=True) if dict(user.attributes)["gender"] == "F"}
    assert not young & older  # no segment mixes the two crowds
    for name in young:
        assert "gender M" in name and "student" in name and "Romance" not in name and "age 45" not in name
    for name in older:
        assert "gender F" in name and "student" not in name and "Sci-Fi" not in name
    assert any("Sci-Fi" in name or "Action" in name for name in young)
    assert any("Romance" in name or "Drama" in name for name in older)


def test_a_user_is_offered_only_segments_whose_named_attributes_are_theirs(fitted) -> None:
    users, segments = fitted
    young_man = users[0]
    # her tastes are the young men's, her attributes are not: no "gender M" or "student" segment for her
    woman = replace(young_man, user_id="w", attributes=(("age", "60"), ("gender", "F"), ("occupation", "doctor")))
    assert any("gender M" in name for name in segments.options([young_man])[0])
    for name in segments.options([woman])[0]:
        assert "gender M" not in name and "student" not in name and segments.fits(name, woman)
    assert not segments.fits(segments.options([young_man])[0][0], woman)
    assert not segments.fits("invented segment", young_man)


def test_free_form_attributes_are_left_out_and_numbers_become_bands(fitted) -> None:
    _, segments = fitted
    encodings = {encoding.name: encoding for encoding in segments.attributes}
    assert set(encodings) == {"age", "gender", "occupation"}  # 120 distinct zip codes say nothing shared
    age = encodings["age"]
    assert len(age.levels) == 4 and age.levels[0].startswith("18-") and age.levels[-1].endswith("-70")
    assert [age.level(value) for value in ("18", "70", "nonsense")] == [0, 3, None]


def test_a_users_options_are_the_nearest_distinct_segments_nearest_first(fitted) -> None:
    users, segments = fitted
    for options in segments.options(users):
        assert 1 <= len(options) <= 3 and len(set(options)) == len(options)
        assert set(options) <= set(segments.vocabulary)


def test_the_fit_is_deterministic_and_round_trips_through_json(fitted) -> None:
    users, segments = fitted
    again = fit_segments(planted_users(), GENRES, seed=0)
    assert again.to_json() == segments.to_json()
    restored = CrowdSegments.from_json(segments.to_json())
    assert restored == segments and restored.options(users) == segments.options(users)


def test_segment_count_grows_with_the_users_within_bounds() -> None:
    assert [segment_count(n) for n in (1, 50, 943, 10**6)] == [2, 4, 15, 16]


def users_table(users: list) -> pd.DataFrame:
    return pd.DataFrame([{"user_id": user.user_id, **dict(user.attributes)} for user in users])


def test_the_warehouse_keeps_one_fit_per_catalog_and_users_table() -> None:
    con = duckdb.connect(":memory:")
    users = planted_users()
    table = users_table(users)
    first = crowd_segments(con, users, GENRES, table)
    # New events for every user move no centroid: the stored fit is reused.
    busier = planted_users(seed=1)
    assert crowd_segments(con, busier, GENRES, table) == first
    assert con.execute("SELECT count(*) FROM crowd_segments").fetchone() == (1,)
    # A changed users table, or another category list, is fitted anew.
    moved = table.assign(occupation=table["occupation"].where(table.index != 0, "writer"))
    crowd_segments(con, busier, GENRES, moved)
    crowd_segments(con, busier, [*GENRES, "Western"], table)
    assert con.execute("SELECT count(*) FROM crowd_segments").fetchone() == (3,)
