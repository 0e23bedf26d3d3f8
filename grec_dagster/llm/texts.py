"""What the LLM layer reads from the warehouse and the texts it embeds.

Item text is the catalog's words about an item (title, categories, brand, description): all a
cold item has. A profile becomes one text per facet, as DynLLM embeds each facet on its own, so a
later attention can weigh a user's categories against their summary.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from grec_dagster.data.schema import CATEGORY_SEPARATOR
from grec_dagster.llm.profile_schema import Catalog, HistoryEvent, UserHistory, UserProfile

FACETS = ("crowd_segment", "interests", "categories", "brands", "summary")
"""The profile facets, in the order of the facet axis of `profile_embeddings`."""


def read_histories(con: duckdb.DuckDBPyConnection) -> list[UserHistory]:
    """Every user's history from the `user_histories` table, oldest event first."""
    rows = con.execute("SELECT user_id, events FROM user_histories ORDER BY user_id").fetchall()
    return [
        UserHistory(
            str(user_id),
            tuple(
                HistoryEvent(event["ts"], str(event["title"] or event["item_id"]), event["category"], event["brand"])
                for event in events
            ),
        )
        for user_id, events in rows
    ]


def read_catalog(con: duckdb.DuckDBPyConnection) -> Catalog:
    """The categories and brands of the `items` table: the only values a profile may name."""
    categories = con.execute(
        """SELECT DISTINCT trim(part) AS c FROM items, unnest(string_split(category, ?)) AS t(part)
           WHERE trim(part) <> '' ORDER BY c""",
        [CATEGORY_SEPARATOR],
    ).fetchall()
    brands = con.execute("SELECT DISTINCT brand FROM items WHERE coalesce(brand, '') <> '' ORDER BY brand").fetchall()
    return Catalog(categories=[row[0] for row in categories], brands=[row[0] for row in brands])


def item_texts(items: pd.DataFrame, item_ids: np.ndarray) -> list[str]:
    """One text per id in `item_ids` order; an id missing from the catalog gets just its id."""
    by_id = items.assign(item_id=items["item_id"].astype(str)).set_index("item_id")
    texts = []
    for item_id in map(str, item_ids):
        if item_id not in by_id.index:
            texts.append(f"item {item_id}")
            continue
        row = by_id.loc[item_id]
        parts = [str(row["title"]) if pd.notna(row["title"]) else f"item {item_id}"]
        if pd.notna(row.get("category")) and row["category"]:
            parts.append("Categories: " + ", ".join(str(row["category"]).split(CATEGORY_SEPARATOR)))
        if pd.notna(row.get("brand")) and row["brand"]:
            parts.append(f"Brand: {row['brand']}")
        if pd.notna(row.get("description")) and row["description"]:
            parts.append(str(row["description"]))
        texts.append(". ".join(parts))
    return texts


def facet_texts(profile: UserProfile) -> list[str]:
    """The profile's facets as texts, in `FACETS` order; an empty list says so in words."""
    return [
        f"Customer segment: {profile.crowd_segment}",
        "Interests: " + (", ".join(profile.interests) or "none"),
        "Categories: " + (", ".join(profile.categories) or "none"),
        "Brands: " + (", ".join(profile.brands) or "none"),
        profile.summary,
    ]
