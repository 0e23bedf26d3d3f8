"""Small renderers for tables shown in Dagster metadata, MLflow and the README."""

from __future__ import annotations

import pandas as pd

HEADLINE = (("recall", 10), ("ndcg", 10), ("recall", 20), ("ndcg", 20), ("mrr", 20), ("hit", 20))


def markdown_preview(frame: pd.DataFrame, rows: int = 10) -> str:
    """The first rows of a table as markdown ("none" when empty). Text is cut to stay readable, and
    a pipe or line break in a value (user data holds anything) is escaped so the layout holds."""
    if frame.empty:
        return "none"
    head = frame.head(rows).copy()
    for column in head.columns:
        if pd.api.types.is_string_dtype(head[column]) or head[column].dtype == object:
            text = head[column].astype("string").str.slice(0, 60)
            head[column] = text.str.replace(r"[\r\n]+", " ", regex=True).str.replace("|", r"\|", regex=False)
    return head.to_markdown(index=False)


def headline_table(results: pd.DataFrame, segment: str = "all", metrics=HEADLINE) -> pd.DataFrame:
    """One row per (protocol, model): the headline metrics of one segment, as columns `metric@k`."""
    chosen = results[(results["segment"] == segment)]
    keys = [f"{m}@{k}" for m, k in metrics]
    chosen = chosen.assign(column=chosen["metric"] + "@" + chosen["k"].astype(str))
    chosen = chosen[chosen["column"].isin(keys)]
    index = [c for c in ("protocol", "model") if c in chosen.columns]
    table = chosen.pivot_table(index=index, columns="column", values="value", sort=False)
    return table.reindex(columns=keys).reset_index()
