"""Profiles cached in DuckDB, so a rerun only pays the LLM for users whose recent history changed.

A profile is reusable when the user, the digest of the history it was written from, the model id
(model plus decoding settings) and the prompt version all match. Rows for older keys are kept: they
are the user's earlier profiles. All values reach DuckDB as bound parameters, never as SQL text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from grec_dagster.llm.profile_schema import UserHistory, UserProfile
from grec_dagster.llm.profiles import DEFAULT_MAX_EVENTS, ProfileResult

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

_STORE = """
INSERT OR REPLACE INTO user_profiles
SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), ?, ?, unnest(?::VARCHAR[]), ?
"""


@dataclass(frozen=True)
class CacheSummary:
    regenerated: int
    reused: int


@dataclass(frozen=True)
class RefreshPlan:
    """Which users need a new profile, and the cached profiles of everyone else."""

    stale: list[UserHistory]
    reused: dict[str, UserProfile]

    @property
    def summary(self) -> CacheSummary:
        return CacheSummary(regenerated=len(self.stale), reused=len(self.reused))


def ensure_profile_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_CREATE_TABLE)


def plan_refresh(
    con: duckdb.DuckDBPyConnection,
    histories: Sequence[UserHistory],
    model: str,
    prompt_version: str,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> RefreshPlan:
    """Split users into those with a current cached profile and those to (re)generate.

    Digests are taken over the `max_events` most recent events -- what the prompt shows -- so
    older activity falling out of the window changes nothing the model saw, and no profile.
    """
    ensure_profile_table(con)
    digests = [history.most_recent(max_events).digest() for history in histories]
    rows = con.execute(_CACHED, [[h.user_id for h in histories], digests, model, prompt_version]).fetchall()
    reused = {user_id: UserProfile.model_validate_json(profile_json) for user_id, profile_json in rows}
    return RefreshPlan(stale=[h for h in histories if h.user_id not in reused], reused=reused)


def store_profiles(
    con: duckdb.DuckDBPyConnection, results: Sequence[ProfileResult], model: str, prompt_version: str
) -> None:
    """Save new profiles under the history digest each was written from (replacing an equal key)."""
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
