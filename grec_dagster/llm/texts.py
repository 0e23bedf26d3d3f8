"""What the LLM layer reads from the warehouse and the texts it embeds.

Item text is the catalog's words about an item (title, categories, brand, description): all a
cold item has. A profile becomes one text per facet, as DynLLM embeds each facet on its own, so a
later attention can weigh a user's categories against their summary.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from grec_dagster.data.schema import CATEGORY_SEPARATOR, USER_KEY, SourceFrames
from grec_dagster.llm.profile_schema import HistoryEvent, UserHistory, UserProfile
from grec_dagster.llm.segment_cache import crowd_segments
from grec_dagster.llm.vocabulary import Catalog, build_catalog, catalog_categories, with_none

FACETS = ("crowd_segment", "interests", "categories", "brands", "summary")
"""The profile facets, in the order of the facet axis of `profile_embeddings`."""


def read_histories(con: duckdb.DuckDBPyConnection) -> list[UserHistory]:
    """Every user's history from the `user_histories` table, oldest event first, with what the
    `users` table knows about them."""
    return _histories(con, _table(con, "users"))


def _histories(con: duckdb.DuckDBPyConnection, users: pd.DataFrame | None) -> list[UserHistory]:
    rows = con.execute("SELECT user_id, n_events, events FROM user_histories ORDER BY user_id").fetchall()
    attributes = user_attributes(users)
    return [
        UserHistory(
            str(user_id),
            tuple(
                HistoryEvent(
                    event["ts"],
                    str(event["title"] or event["item_id"]),
                    event["category"],
                    event["brand"],
                    str(event["item_id"]),
                )
                for event in events
            ),
            attributes.get(str(user_id), ()),
            int(n_events),
        )
        for user_id, n_events, events in rows
    ]


def histories_from_frames(frames: SourceFrames, max_events: int) -> list[UserHistory]:
    """Each user's `max_events` most recent interactions of a source, as `user_histories` would hold
    them without the train/test split: for benchmarks that profile a whole dataset."""
    log = frames.interactions.sort_values([USER_KEY, "ts"], kind="stable")
    counts = log.groupby(USER_KEY).size()
    catalog = frames.items[["item_id", "title", "category", "brand"]].drop_duplicates("item_id", keep="last")
    recent = with_none(log.groupby(USER_KEY).tail(max_events).merge(catalog, on="item_id", how="left"))
    events: dict[str, list[HistoryEvent]] = {}
    for user_id, item, ts, title, category, brand in zip(
        recent[USER_KEY],
        recent["item_id"],
        recent["ts"],
        recent["title"],
        recent["category"],
        recent["brand"],
        strict=True,
    ):
        events.setdefault(str(user_id), []).append(
            HistoryEvent(ts.to_pydatetime(), str(title or item), category, brand, str(item))
        )
    attributes = user_attributes(frames.users)
    return [
        UserHistory(user_id, tuple(found), attributes.get(user_id, ()), int(counts[user_id]))
        for user_id, found in sorted(events.items())
    ]


def user_attributes(users: pd.DataFrame | None) -> dict[str, tuple[tuple[str, str], ...]]:
    """User id -> (column, value as text) for every attribute the user has, in column order."""
    if users is None or users.empty:
        return {}
    columns = [column for column in users.columns if column != USER_KEY]
    text = users[columns].astype("string")
    return {
        str(user_id): tuple(
            (column, value) for column, value in zip(columns, values, strict=True) if not pd.isna(value)
        )
        for user_id, values in zip(users[USER_KEY], text.itertuples(index=False, name=None), strict=True)
    }


def read_catalog(con: duckdb.DuckDBPyConnection) -> Catalog:
    """The vocabularies a profile may name: the `items` table's categories, brands and keywords, and
    the crowd segments of this catalog and users table (fitted on the first call, then kept)."""
    items = con.execute("SELECT item_id, title, category, brand, description FROM items").df()
    users = _table(con, "users")
    segments = crowd_segments(con, _histories(con, users), catalog_categories(items), users)
    return build_catalog(items, segments)


def read_current_profiles(con: duckdb.DuckDBPyConnection) -> dict[str, UserProfile]:
    """The profile each user has now (`current_user_profiles`, which `user_profiles` writes)."""
    rows = con.execute("SELECT user_id, profile_json FROM current_user_profiles").fetchall()
    return {str(user_id): UserProfile.model_validate_json(text) for user_id, text in rows}


def _table(con: duckdb.DuckDBPyConnection, name: str) -> pd.DataFrame | None:
    exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0]
    return con.execute(f"SELECT * FROM {name}").df() if exists else None


def item_texts(items: pd.DataFrame, item_ids: np.ndarray) -> list[str]:
    """One text per id in `item_ids` order; an id missing from the catalog gets just its id.
    Column-wise, so a catalog of millions of items costs seconds, not a lookup per item."""
    table = items.assign(item_id=items["item_id"].astype(str)).drop_duplicates("item_id", keep="last")
    table = table.set_index("item_id").reindex(pd.Index([str(item_id) for item_id in item_ids]))

    def given(name: str) -> pd.Series:
        values = table[name] if name in table else pd.Series(pd.NA, index=table.index)
        values = values.astype("string")
        return values.where(values != "")

    title = table["title"].astype("string").fillna("item " + pd.Series(table.index, index=table.index))
    parts = pd.concat(
        [
            title,
            "Categories: " + given("category").str.split(CATEGORY_SEPARATOR).str.join(", "),
            "Brand: " + given("brand"),
            given("description"),
        ],
        axis=1,
    )
    return [". ".join(part for part in row if not pd.isna(part)) for row in parts.to_numpy(dtype=object)]


def facet_texts(profile: UserProfile) -> list[str]:
    """The profile's facets as texts, in `FACETS` order; an empty list says so in words."""
    return [
        f"Customer segment: {profile.crowd_segment}",
        "Interests: " + (", ".join(profile.interests) or "none"),
        "Categories: " + (", ".join(profile.categories) or "none"),
        "Brands: " + (", ".join(profile.brands) or "none"),
        profile.summary,
    ]
