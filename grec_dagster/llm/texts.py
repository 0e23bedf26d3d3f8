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
