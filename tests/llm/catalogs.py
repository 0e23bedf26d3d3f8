"""Hand-made users and the catalog of the items they bought, for the LLM-layer tests."""

from collections.abc import Sequence
from datetime import datetime, timedelta

import pandas as pd

from grec_dagster.llm.profile_schema import HistoryEvent, UserHistory
from grec_dagster.llm.vocabulary import Catalog, catalog_for

START = datetime(2000, 1, 1)


def history(
    user_id: str,
    items: Sequence[tuple[str, str | None, str | None]],
    attributes: Sequence[tuple[str, str]] = (),
) -> UserHistory:
    """One event a day from START, each (title, category, brand); the title is also the item id."""
    events = tuple(HistoryEvent(START + timedelta(days=i), t, c, b, t) for i, (t, c, b) in enumerate(items))
    return UserHistory(user_id, events, tuple(attributes))


def items_frame(histories: Sequence[UserHistory], descriptions: dict[str, str] | None = None) -> pd.DataFrame:
    """The `items` table of everything the users bought (item id = title)."""
    rows = {
        event.title: {"item_id": event.title, "title": event.title, "category": event.category, "brand": event.brand}
        for history in histories
        for event in history.events
    }
    frame = pd.DataFrame(list(rows.values()), columns=["item_id", "title", "category", "brand"])
    return frame.assign(description=frame["item_id"].map(descriptions or {}))


def catalog_of(histories: Sequence[UserHistory], descriptions: dict[str, str] | None = None) -> Catalog:
    return catalog_for(items_frame(histories, descriptions), histories)
