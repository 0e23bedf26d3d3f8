"""Profiles cached in DuckDB, so a rerun only pays the LLM for users whose request changed, and
a budget on how many it pays for in one run.

A profile is reusable when the user, the digest of the request it was written from (recent events,
attributes, options: `vocabulary.ProfileRequest`), the model id (model plus decoding settings) and
the prompt version all match. Rows for older keys are kept: they are the user's earlier profiles.

Budget (issue 16): on a large log, a new prompt or model would re-profile every user in one run.
With `max_profiles` set, only that many of the users whose request changed are profiled, the most
active first (most training events, then user id, so the choice is deterministic); the others keep
their latest profile under this model and prompt, or, if they never had one, the profile their
options give without a model (`history_profile`). Those stand-ins are not stored, so the next run
profiles them in turn. All values reach DuckDB as bound parameters, never as SQL text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from grec_dagster.llm.profile_schema import UserHistory, UserProfile
from grec_dagster.llm.profiles import DEFAULT_MAX_EVENTS, ProfileResult, history_profile
from grec_dagster.llm.texts import read_catalog
from grec_dagster.llm.vocabulary import Catalog, profile_requests

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS user_profiles (
    user_id VARCHAR NOT NULL,
    history_hash VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    prompt_version VARCHAR NOT NULL,
    profile_json VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (user_id, history_hash, model, prompt_version)
)
"""

_CACHED = """
SELECT wanted.user_id, profiles.profile_json
FROM (SELECT unnest(?::VARCHAR[]) AS user_id, unnest(?::VARCHAR[]) AS history_hash) AS wanted
JOIN user_profiles AS profiles USING (user_id, history_hash)
WHERE profiles.model = ? AND profiles.prompt_version = ?
"""

_LATEST = """
SELECT user_id, arg_max(profile_json, created_at)
FROM user_profiles
WHERE user_id IN (SELECT unnest(?::VARCHAR[])) AND model = ? AND prompt_version = ?
GROUP BY user_id
"""

_STORE = """
INSERT OR REPLACE INTO user_profiles
SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), ?, ?, unnest(?::VARCHAR[]), ?
"""


@dataclass(frozen=True)
class CacheSummary:
    regenerated: int
    """Users profiled in this run."""
    reused: int
    """Users whose cached profile is current."""
    kept: int
    """Over the budget: their request changed, they keep their latest profile."""
    fallback: int
    """Over the budget and never profiled under this model and prompt: the profile their options give."""


@dataclass(frozen=True)
class RefreshPlan:
    """Who is profiled in this run (most active first), and the profile everyone else has meanwhile."""

    stale: list[UserHistory]
    reused: dict[str, UserProfile]
    kept: dict[str, UserProfile]
    fallback: dict[str, UserProfile]

    @property
    def summary(self) -> CacheSummary:
        return CacheSummary(len(self.stale), len(self.reused), len(self.kept), len(self.fallback))

    @property
    def standing(self) -> dict[str, UserProfile]:
        """The profile of every user this run does not profile."""
        return self.reused | self.kept | self.fallback


def ensure_profile_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_CREATE_TABLE)


def plan_refresh(
    con: duckdb.DuckDBPyConnection,
    histories: Sequence[UserHistory],
    model: str,
    prompt_version: str,
    max_events: int = DEFAULT_MAX_EVENTS,
    *,
    catalog: Catalog | None = None,
    max_profiles: int | None = None,
) -> RefreshPlan:
    """Split users into those with a current cached profile, those to profile in this run (at most
    `max_profiles`, None for all) and those over the budget.

    Requests show the `max_events` most recent events, so older activity falling out of that
    window changes nothing the model saw, and no profile. `catalog` gives the options; by default
    it is read from `con`.
    """
    if max_profiles is not None and max_profiles < 0:
        raise ValueError(f"max_profiles must be at least 0, got {max_profiles}")
    ensure_profile_table(con)
    requests = profile_requests(histories, catalog or read_catalog(con), max_events)
    rows = con.execute(
        _CACHED, [[r.user_id for r in requests], [r.digest() for r in requests], model, prompt_version]
    ).fetchall()
    reused = {user_id: UserProfile.model_validate_json(profile_json) for user_id, profile_json in rows}
    changed = sorted(
        (index for index, history in enumerate(histories) if history.user_id not in reused),
        key=lambda index: (-histories[index].activity, histories[index].user_id),
    )
    budget = len(changed) if max_profiles is None else max_profiles
    over = changed[budget:]
    latest = con.execute(_LATEST, [[histories[index].user_id for index in over], model, prompt_version]).fetchall()
    kept = {user_id: UserProfile.model_validate_json(profile_json) for user_id, profile_json in latest}
    fallback = {
        requests[index].user_id: history_profile(requests[index])
        for index in over
        if requests[index].user_id not in kept
    }
    return RefreshPlan([histories[index] for index in changed[:budget]], reused, kept, fallback)


def store_profiles(
    con: duckdb.DuckDBPyConnection, results: Sequence[ProfileResult], model: str, prompt_version: str
) -> None:
    """Save new profiles under the request digest each was written from (replacing an equal key)."""
    ensure_profile_table(con)
    if not results:
        return
    con.execute(
        _STORE,
        [
            [result.user_id for result in results],
            [result.history_hash for result in results],
            model,
            prompt_version,
            [result.profile.model_dump_json() for result in results],
            datetime.now(UTC).replace(tzinfo=None),
        ],
    )
