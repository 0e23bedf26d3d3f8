"""The canonical tables every data source produces and every later stage reads.

Sources differ (MovieLens, a synthetic shop, a user's own files); after loading they
all look like this, so nothing downstream knows where the data came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

CATEGORY_SEPARATOR = "|"
"""An item may belong to several categories (MovieLens genres): they are joined by this."""

INTERACTION_COLUMNS: dict[str, str] = {
    "user_id": "string",
    "item_id": "string",
    "ts": "datetime64[us]",
    "event": "string",
    "value": "float64",
    "source": "string",
    "source_row": "int64",
    "positive": "boolean",
}
"""The accepted raw log. `ts` is UTC without a zone; `source`/`source_row` point back to the input;
`positive` is false for a rating below the source's `positive_min` (kept, never trained on).
`positive` comes last because warehouses from before it gain it as their last column."""

ITEM_COLUMNS: dict[str, str] = {
    "item_id": "string",
    "title": "string",
    "category": "string",
    "brand": "string",
    "description": "string",
    "price": "float64",
}
"""The catalog. Columns a source does not know are NULL, never invented."""

USER_KEY = "user_id"
"""Users have an id plus whatever attributes the source knows (age, gender, region ...)."""

QUARANTINE_COLUMNS: dict[str, str] = {
    "source": "string",
    "source_row": "int64",
    "column": "string",
    "reason": "string",
    "raw": "string",
}
"""Every rejected row, with where it came from and why."""

DUCKDB_TYPES = {
    "string": "VARCHAR",
    "datetime64[us]": "TIMESTAMP",
    "float64": "DOUBLE",
    "int64": "BIGINT",
    "boolean": "BOOLEAN",
}


def conform(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Return `frame` with exactly `columns`, in order and typed; missing ones become NULL."""
    out = pd.DataFrame(index=frame.index)
    for name, dtype in columns.items():
        if name in frame.columns:
            out[name] = frame[name].astype(dtype)
        else:
            out[name] = pd.Series(pd.NA if dtype == "string" else None, index=frame.index, dtype=dtype)
    return out.reset_index(drop=True)


def conform_users(frame: pd.DataFrame) -> pd.DataFrame:
    """Users keep every attribute column; the id comes first and is a string."""
    out = frame.copy()
    out[USER_KEY] = out[USER_KEY].astype("string")
    attributes = [c for c in out.columns if c != USER_KEY]
    return out[[USER_KEY, *attributes]].reset_index(drop=True)


@dataclass
class SourceFrames:
    """What any data source yields: the interaction log, the item catalog and the users."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    quarantine: pd.DataFrame | None = None

    def conformed(self) -> SourceFrames:
        return SourceFrames(
            interactions=conform(self.interactions, INTERACTION_COLUMNS),
            items=conform(self.items, ITEM_COLUMNS),
            users=conform_users(self.users),
            quarantine=conform(
                self.quarantine if self.quarantine is not None else pd.DataFrame(), QUARANTINE_COLUMNS
            ),
        )
