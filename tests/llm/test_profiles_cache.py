"""The DuckDB profile cache: which users need a new profile, the per-run budget, and storing the ones written."""

from collections.abc import Sequence
from datetime import timedelta

import duckdb
import pytest

from grec_dagster.llm.profile_cache import plan_refresh, store_profiles
from grec_dagster.llm.profile_schema import HistoryEvent, UserHistory
from grec_dagster.llm.profiles import ProfileResult, ProfileStatus, history_profile
from grec_dagster.llm.vocabulary import Catalog, profile_requests
from tests.llm.catalogs import START, catalog_of

GENRES = ["Comedy", "Drama", "Horror"]
MODEL, PROMPT = "tiny|bfloat16|greedy", "profile_v3@0123456789ab"


def user(index: int, events: int = 4, title: str = "Movie") -> UserHistory:
    return UserHistory(
        f"user-{index}",
        tuple(
            HistoryEvent(START + timedelta(days=day), f"{title} {index}.{day}", GENRES[(index + day) % 3], None)
            for day in range(events)
        ),
    )


CATALOG = catalog_of([user(i, events=6) for i in range(20)])


def written(histories: Sequence[UserHistory], catalog: Catalog = CATALOG, max_events: int = 10) -> list[ProfileResult]:
    """Profiles as `generate_profiles` returns them; the first options, so no model is needed."""
    return [
        ProfileResult(
            user_id=request.user_id,
            history_hash=request.digest(),
            profile=history_profile(request),
            raw_text="",
            status=ProfileStatus.FALLBACK,
            corrections=(),
            prompt_tokens=0,
            cached_tokens=0,
            new_tokens=0,
        )
        for request in profile_requests(histories, catalog, max_events)
    ]


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    return duckdb.connect(":memory:")


def plan(con: duckdb.DuckDBPyConnection, histories: Sequence[UserHistory], **settings):
    return plan_refresh(con, histories, settings.pop("model", MODEL), PROMPT, catalog=CATALOG, **settings)


def test_only_users_whose_history_changed_need_a_new_profile(con: duckdb.DuckDBPyConnection) -> None:
    histories = [user(i) for i in range(20)]
    first = plan(con, histories)
    assert [h.user_id for h in first.stale] == sorted(h.user_id for h in histories)  # equal activity: by id
    store_profiles(con, written(first.stale), MODEL, PROMPT)

    changed = {3, 7, 11, 12, 19}
    histories = [user(i, events=5) if i in changed else user(i) for i in range(20)]
    again = plan(con, histories)
    assert sorted(h.user_id for h in again.stale) == sorted(f"user-{i}" for i in changed)
    assert again.summary.regenerated == 5 and again.summary.reused == 15
    assert again.reused["user-0"] == written([user(0)])[0].profile

    store_profiles(con, written(again.stale), MODEL, PROMPT)
    assert plan(con, histories).summary.regenerated == 0
    assert con.execute("SELECT count(*) FROM user_profiles").fetchone() == (25,)


def test_another_model_prompt_version_or_option_set_reuses_nothing(con: duckdb.DuckDBPyConnection) -> None:
    histories = [user(i) for i in range(4)]
    store_profiles(con, written(histories), MODEL, PROMPT)
    assert plan(con, histories).summary.reused == 4
    assert plan(con, histories, model="other-model").summary.regenerated == 4
    assert plan_refresh(con, histories, MODEL, "profile_v9@ba9876543210", catalog=CATALOG).summary.regenerated == 4
    # the same histories against a catalog whose segments differ: other options, other requests
    refitted = catalog_of([user(i, events=2) for i in range(60)])
    assert refitted.segments != CATALOG.segments
    assert plan_refresh(con, histories, MODEL, PROMPT, catalog=refitted).summary.regenerated > 0


def test_events_older_than_the_prompt_window_change_nothing(con: duckdb.DuckDBPyConnection) -> None:
    history = user(1, events=6)
    store_profiles(con, written([history], max_events=3), MODEL, PROMPT)
    older = HistoryEvent(START - timedelta(days=30), "An old purchase", "Comedy", None)
    grown = UserHistory(history.user_id, (older, *history.events))
    # `older` shifts the user's category mix a little; their nearest segments are unchanged
    assert CATALOG.segments.options([grown]) == CATALOG.segments.options([history])
    assert plan(con, [grown], max_events=3).summary.reused == 1
    assert plan(con, [grown], max_events=10).summary.regenerated == 1


def test_the_budget_profiles_the_most_active_changed_users_first(con: duckdb.DuckDBPyConnection) -> None:
    histories = [
        UserHistory(h.user_id, h.events, total_events=100 - i) for i, h in enumerate(user(i) for i in range(6))
    ]
    first = plan(con, histories, max_profiles=2)
    assert [h.user_id for h in first.stale] == ["user-0", "user-1"]  # 100 and 99 events
    assert first.summary.kept == 0 and set(first.fallback) == {f"user-{i}" for i in range(2, 6)}
    requests = {r.user_id: r for r in profile_requests(histories, CATALOG, 10)}
    assert first.fallback["user-4"] == history_profile(requests["user-4"])
    store_profiles(con, written(first.stale), MODEL, PROMPT)

    # The stand-ins were not stored: the next run profiles the next most active users.
    second = plan(con, histories, max_profiles=2)
    assert [h.user_id for h in second.stale] == ["user-2", "user-3"]
    assert set(second.reused) == {"user-0", "user-1"} and set(second.standing) == {
        "user-0",
        "user-1",
        "user-4",
        "user-5",
    }


def test_over_the_budget_a_changed_user_keeps_their_latest_profile(con: duckdb.DuckDBPyConnection) -> None:
    histories = [user(i) for i in range(3)]
    store_profiles(con, written(histories), MODEL, PROMPT)
    old = {result.user_id: result.profile for result in written(histories)}
    changed = [user(i, events=5, title="Film") for i in range(3)]
    later = plan(con, changed, max_profiles=1)
    assert [h.user_id for h in later.stale] == ["user-0"]  # equal activity: by user id
    assert later.kept == {"user-1": old["user-1"], "user-2": old["user-2"]} and later.fallback == {}
    assert later.summary.kept == 2 and later.summary.regenerated == 1 and later.summary.reused == 0
    assert plan(con, changed, max_profiles=0).summary.regenerated == 0
    with pytest.raises(ValueError, match="max_profiles"):
        plan(con, changed, max_profiles=-1)


def test_hostile_text_is_stored_as_data_not_sql(con: duckdb.DuckDBPyConnection) -> None:
    hostile = UserHistory("u'); DROP TABLE user_profiles;--", user(2, title="Robert'); DROP TABLE x;--").events)
    store_profiles(con, written([hostile]), MODEL, "v'1")
    found = plan_refresh(con, [hostile], MODEL, "v'1", catalog=CATALOG)
    assert list(found.reused) == [hostile.user_id]
    assert "Robert'); DROP TABLE x;--" in found.reused[hostile.user_id].summary


def test_storing_the_same_key_again_replaces_the_row(con: duckdb.DuckDBPyConnection) -> None:
    histories = [user(5)]
    store_profiles(con, written(histories), MODEL, PROMPT)
    store_profiles(con, written(histories), MODEL, PROMPT)
    store_profiles(con, [], MODEL, PROMPT)
    assert con.execute("SELECT count(*) FROM user_profiles").fetchone() == (1,)
