"""The DuckDB profile cache: which users need a new profile, and storing the ones written."""

from collections.abc import Sequence
from datetime import datetime, timedelta

import duckdb
import pytest

from grec_dagster.llm.profile_cache import plan_refresh, store_profiles
from grec_dagster.llm.profile_schema import Catalog, HistoryEvent, UserHistory
from grec_dagster.llm.profiles import ProfileResult, ProfileStatus, history_profile

CATALOG = Catalog(categories=["Comedy", "Drama", "Horror"], brands=[])
MODEL, PROMPT = "tiny|bfloat16|greedy", "profile_v1@0123456789ab"
START = datetime(2000, 1, 1)


def user(index: int, events: int = 4, title: str = "Movie") -> UserHistory:
    genres = CATALOG.categories
    return UserHistory(
        f"user-{index}",
        tuple(
            HistoryEvent(START + timedelta(days=day), f"{title} {index}.{day}", genres[(index + day) % 3], None)
            for day in range(events)
        ),
    )


def written(histories: Sequence[UserHistory], max_events: int = 20) -> list[ProfileResult]:
    """Profiles as `generate_profiles` returns them; derived from the history, so no model is needed."""
    results = []
    for history in histories:
        recent = history.most_recent(max_events)
        results.append(
            ProfileResult(
                user_id=recent.user_id,
                history_hash=recent.digest(),
                profile=history_profile(recent, CATALOG),
                raw_text="",
                status=ProfileStatus.FALLBACK,
                corrections=(),
                prompt_tokens=0,
                cached_tokens=0,
                new_tokens=0,
            )
        )
    return results


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    return duckdb.connect(":memory:")


def test_only_users_whose_history_changed_need_a_new_profile(con: duckdb.DuckDBPyConnection) -> None:
    histories = [user(i) for i in range(20)]
    first = plan_refresh(con, histories, MODEL, PROMPT)
    assert [h.user_id for h in first.stale] == [h.user_id for h in histories]
    store_profiles(con, written(first.stale), MODEL, PROMPT)

    changed = {3, 7, 11, 12, 19}
    histories = [user(i, events=5) if i in changed else user(i) for i in range(20)]
    plan = plan_refresh(con, histories, MODEL, PROMPT)
    assert sorted(h.user_id for h in plan.stale) == sorted(f"user-{i}" for i in changed)
    assert plan.summary.regenerated == 5 and plan.summary.reused == 15
    assert plan.reused["user-0"] == history_profile(user(0), CATALOG)

    store_profiles(con, written(plan.stale), MODEL, PROMPT)
    assert plan_refresh(con, histories, MODEL, PROMPT).summary.regenerated == 0
    assert con.execute("SELECT count(*) FROM user_profiles").fetchone() == (25,)


def test_another_model_or_prompt_version_reuses_nothing(con: duckdb.DuckDBPyConnection) -> None:
    histories = [user(i) for i in range(4)]
    store_profiles(con, written(histories), MODEL, PROMPT)
    assert plan_refresh(con, histories, MODEL, PROMPT).summary.reused == 4
    assert plan_refresh(con, histories, "other-model", PROMPT).summary.regenerated == 4
    assert plan_refresh(con, histories, MODEL, "profile_v2@ba9876543210").summary.regenerated == 4


def test_events_older_than_the_prompt_window_change_nothing(con: duckdb.DuckDBPyConnection) -> None:
    history = user(1, events=6)
    store_profiles(con, written([history], max_events=3), MODEL, PROMPT)
    older = HistoryEvent(START - timedelta(days=30), "An old purchase", "Drama", None)
    grown = UserHistory(history.user_id, (older, *history.events))
    assert plan_refresh(con, [grown], MODEL, PROMPT, max_events=3).summary.reused == 1
    assert plan_refresh(con, [grown], MODEL, PROMPT, max_events=10).summary.regenerated == 1


def test_hostile_text_is_stored_as_data_not_sql(con: duckdb.DuckDBPyConnection) -> None:
    hostile = UserHistory("u'); DROP TABLE user_profiles;--", user(2, title="Robert'); DROP TABLE x;--").events)
    store_profiles(con, written([hostile]), MODEL, "v'1")
    plan = plan_refresh(con, [hostile], MODEL, "v'1")
    assert list(plan.reused) == [hostile.user_id]
    assert "Robert'); DROP TABLE x;--" in plan.reused[hostile.user_id].summary


def test_storing_the_same_key_again_replaces_the_row(con: duckdb.DuckDBPyConnection) -> None:
    histories = [user(5)]
    store_profiles(con, written(histories), MODEL, PROMPT)
    store_profiles(con, written(histories), MODEL, PROMPT)
    store_profiles(con, [], MODEL, PROMPT)
    assert con.execute("SELECT count(*) FROM user_profiles").fetchone() == (1,)
