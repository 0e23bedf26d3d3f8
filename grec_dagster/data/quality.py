"""Great Expectations suites over the warehouse tables: the gate between ingestion and training.

Row rules at ingestion (`validation`) keep bad rows out one at a time. These suites judge what
the tables hold, including what no single row shows: an event logged in two files, an item
missing from the catalog, a file ten times smaller than the one before. GX 1.x runs in an
ephemeral context on a pandas frame read from DuckDB, and is imported only when a suite runs:
its import costs seconds that loading the Dagster definitions should not pay.

Expectations are plain data, `(GX class name, kwargs)`, so a suite can be built and read
without GX.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import duckdb
import pandas as pd
from pydantic import BaseModel, Field, field_validator, model_validator

from grec_dagster.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS, USER_KEY
from grec_dagster.data.validation import RowRules

SAMPLE_ROWS = 10
"""Bad rows shown per failing expectation."""

GX_TYPES: dict[str, str] = {
    "string": "str",
    "datetime64[us]": "datetime64",
    "float64": "float64",
    "int64": "int64",
    "boolean": "bool",
}
"""Our schema's dtypes as GX names the scalar type of the pandas columns DuckDB returns."""

NS_RANGE = (pd.Timestamp("1678-01-01"), pd.Timestamp("2262-01-01"))
"""GX compares datetimes vectorized only at nanosecond precision, which spans these years."""

Expectation = tuple[str, dict[str, Any]]
"""A GX expectation class name and its keyword arguments."""


class QualityParams(BaseModel):
    """The data-quality rules: shared by the row rules at ingestion and the checks after it."""

    ts_min: str = Field(default="1990-01-01", description="Events before this (the configured start) are rejected.")
    ts_max: str | None = Field(
        default=None, description="Events after this are rejected; unset: now, so no event from the future."
    )
    value_min: float | None = Field(default=0.0, description="Smallest accepted event value; unset: no bound.")
    value_max: float | None = Field(default=None, description="Largest accepted event value; unset: no bound.")
    max_text_length: int = Field(default=256, ge=1, description="Longest accepted user id, item id or event name.")
    volume_factor: float = Field(
        default=10.0,
        gt=1.0,
        description="A batch with under previous / factor or over previous * factor accepted rows fails its check.",
    )

    @field_validator("ts_min", "ts_max")
    @classmethod
    def _is_timestamp(cls, value: str | None) -> str | None:
        if value is not None and not NS_RANGE[0] < pd.Timestamp(value) < NS_RANGE[1]:
            raise ValueError(f"{value!r} must lie between {NS_RANGE[0].year} and {NS_RANGE[1].year}")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> QualityParams:
        if self.ts_max is not None and pd.Timestamp(self.ts_max) <= pd.Timestamp(self.ts_min):
            raise ValueError(f"ts_max {self.ts_max} must come after ts_min {self.ts_min}")
        if self.value_min is not None and self.value_max is not None and self.value_max < self.value_min:
            raise ValueError(f"value_max {self.value_max} is below value_min {self.value_min}")
        return self

    def window(self, now: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The accepted time range; `now` (UTC, naive) closes it when `ts_max` is unset."""
        return pd.Timestamp(self.ts_min), pd.Timestamp(self.ts_max) if self.ts_max else now

    def row_rules(self, now: pd.Timestamp, catalog: pd.Index | None = None) -> RowRules:
        ts_min, ts_max = self.window(now)
        return RowRules(ts_min, ts_max, self.value_min, self.value_max, self.max_text_length, catalog)

    def volume_bounds(self, previous_rows: int | None) -> tuple[int, int] | None:
        """Accepted row counts a batch may have given the previous one; None when there is nothing to compare."""
        if not previous_rows:
            return None
        return int(previous_rows / self.volume_factor), int(previous_rows * self.volume_factor)


def utc_now() -> pd.Timestamp:
    """Now, as the warehouse stores time: UTC without a zone."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None)


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's verdict: what it looked at, how many rows broke it, and which (a sample)."""

    expectation: str
    column: str
    passed: bool
    checked: int | None
    unexpected: int | None
    observed: str
    sample_positions: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SuiteReport:
    """A suite's verdict on one frame, with the rows that broke it."""

    suite: str
    rows: int
    outcomes: list[ExpectationOutcome]
    bad_rows: pd.DataFrame
    """A sample of rows that broke an expectation, each with the expectation it broke."""

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self.outcomes)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.passed]

    def table(self, failures_only: bool = False) -> pd.DataFrame:
        """The outcomes, one row per expectation."""
        chosen = self.failures if failures_only else self.outcomes
        return pd.DataFrame(
            [
                {
                    "expectation": o.expectation,
                    "column": o.column,
                    "passed": o.passed,
                    "unexpected": o.unexpected,
                    "checked": o.checked,
                    "observed": o.observed,
                }
                for o in chosen
            ],
            columns=["expectation", "column", "passed", "unexpected", "checked", "observed"],
        )

    def summary(self) -> str:
        if self.passed:
            return f"{self.suite}: all {len(self.outcomes)} expectations met on {self.rows} rows"
        broken = "; ".join(f"{o.expectation}({o.column}): {o.observed}" for o in self.failures)
        return f"{self.suite}: {len(self.failures)} of {len(self.outcomes)} expectations failed on {self.rows} rows: {broken}"


# --- the suites ----------------------------------------------------------------------------


def schema_expectations(columns: dict[str, str], extra: list[str]) -> list[Expectation]:
    """Exactly these columns, in order (then the derived `extra` ones), each of its type."""
    expectations: list[Expectation] = [("ExpectTableColumnsToMatchOrderedList", {"column_list": [*columns, *extra]})]
    for name, dtype in columns.items():
        expectations.append(("ExpectColumnValuesToBeOfType", {"column": name, "type_": GX_TYPES[dtype]}))
    return expectations


def id_expectations(column: str, params: QualityParams, unique: bool) -> list[Expectation]:
    expectations: list[Expectation] = [
        ("ExpectColumnValuesToNotBeNull", {"column": column}),
        (
            "ExpectColumnValueLengthsToBeBetween",
            {"column": column, "min_value": 1, "max_value": params.max_text_length},
        ),
    ]
    if unique:
        expectations.append(("ExpectColumnValuesToBeUnique", {"column": column}))
    return expectations


def interaction_expectations(
    params: QualityParams, now: pd.Timestamp, has_catalog: bool, previous_rows: int | None
) -> list[Expectation]:
    """Schema, ids, time window, value range, no event twice, known items, volume against the previous batch."""
    ts_min, ts_max = params.window(now)
    derived = ["copies", "ts_ns", *(["in_catalog"] if has_catalog else [])]
    expectations = schema_expectations(INTERACTION_COLUMNS, derived)
    expectations += id_expectations("user_id", params, unique=False) + id_expectations("item_id", params, unique=False)
    expectations += [
        ("ExpectColumnValuesToNotBeNull", {"column": "ts"}),
        ("ExpectColumnValuesToBeBetween", {"column": "ts_ns", "min_value": ts_min, "max_value": ts_max}),
        ("ExpectColumnValuesToNotBeNull", {"column": "value"}),
        ("ExpectColumnValuesToBeInSet", {"column": "copies", "value_set": [1]}),
    ]
    if params.value_min is not None or params.value_max is not None:
        bounds = {"min_value": params.value_min, "max_value": params.value_max}
        expectations.append(("ExpectColumnValuesToBeBetween", {"column": "value", **bounds}))
    if has_catalog:
        expectations.append(("ExpectColumnValuesToBeInSet", {"column": "in_catalog", "value_set": [True]}))
    low, high = params.volume_bounds(previous_rows) or (1, None)
    expectations.append(("ExpectTableRowCountToBeBetween", {"min_value": max(low, 1), "max_value": high}))
    return expectations


def item_expectations(params: QualityParams) -> list[Expectation]:
    """The catalog's schema, one row per non-blank item id, no negative price."""
    return [
        *schema_expectations(ITEM_COLUMNS, []),
        *id_expectations("item_id", params, unique=True),
        ("ExpectColumnValuesToBeBetween", {"column": "price", "min_value": 0}),
    ]


def user_expectations(params: QualityParams) -> list[Expectation]:
    """The user id first and a string (the other columns vary by source), one row per non-blank id."""
    return [
        ("ExpectColumnToExist", {"column": USER_KEY, "column_index": 0}),
        ("ExpectColumnValuesToBeOfType", {"column": USER_KEY, "type_": GX_TYPES["string"]}),
        *id_expectations(USER_KEY, params, unique=True),
    ]


# --- what each suite reads -----------------------------------------------------------------

_INTERACTIONS_UNDER_CHECK = """
WITH batch AS (
    SELECT * FROM interactions WHERE $source IS NULL OR source = $source
), elsewhere AS (
    SELECT other.* FROM interactions other SEMI JOIN batch
        ON other.user_id = batch.user_id AND other.item_id = batch.item_id AND other.ts = batch.ts
    WHERE $source IS NOT NULL AND other.source IS DISTINCT FROM $source
), counted AS (
    SELECT *, count(*) OVER (PARTITION BY user_id, item_id, ts, event, value) AS copies
    FROM (SELECT *, true AS in_batch FROM batch UNION ALL SELECT *, false AS in_batch FROM elsewhere)
)
SELECT * EXCLUDE (in_batch),
    CAST(least(greatest(ts, $ns_min), $ns_max) AS TIMESTAMP_NS) AS ts_ns
    {catalog}
FROM counted WHERE in_batch ORDER BY source, source_row
"""
"""The batch's rows (all rows when `$source` is NULL), each with how many times the whole table
holds its event (`copies`, counting other files too), its time clamped to the nanosecond range
(`ts_ns`, for a vectorized range check) and, when there is a catalog, whether it knows the item."""


def interactions_under_check(con: duckdb.DuckDBPyConnection, source: str | None, has_catalog: bool) -> pd.DataFrame:
    catalog = ", item_id IN (SELECT item_id FROM items) AS in_catalog" if has_catalog else ""
    params = {"source": source, "ns_min": NS_RANGE[0], "ns_max": NS_RANGE[1]}
    return con.execute(_INTERACTIONS_UNDER_CHECK.format(catalog=catalog), params).df()


def has_rows(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether `table` (one of ours, never user text) exists and holds a row."""
    exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = $table", {"table": table}).fetchone()
    return bool(exists[0]) and con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] > 0


def check_interactions(
    con: duckdb.DuckDBPyConnection,
    params: QualityParams,
    now: pd.Timestamp,
    source: str | None = None,
    previous_rows: int | None = None,
) -> SuiteReport:
    """Judge the accepted rows of one batch (`source`, a file) or, with None, of the whole table."""
    has_catalog = has_rows(con, "items")
    frame = interactions_under_check(con, source, has_catalog)
    return run_suite("raw_interactions", frame, interaction_expectations(params, now, has_catalog, previous_rows))


def check_items(con: duckdb.DuckDBPyConnection, params: QualityParams) -> SuiteReport:
    return run_suite("items", con.execute("SELECT * FROM items").df(), item_expectations(params))


def check_users(con: duckdb.DuckDBPyConnection, params: QualityParams) -> SuiteReport:
    return run_suite("users", con.execute("SELECT * FROM users").df(), user_expectations(params))


# --- running GX ----------------------------------------------------------------------------


def _great_expectations() -> ModuleType:
    """GX, imported on first use, with its chatter (analytics, progress bars, INFO logs) off."""
    import great_expectations

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    return great_expectations


def run_suite(name: str, frame: pd.DataFrame, expectations: list[Expectation]) -> SuiteReport:
    """Validate `frame` against `expectations` in an ephemeral GX context (nothing is written to disk)."""
    gx = _great_expectations()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        ),
    )
    frame = frame.reset_index(drop=True)
    batch = (
        context.data_sources.add_pandas(name)
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(name)
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(
        name=name, expectations=[getattr(gx.expectations, kind)(**kwargs) for kind, kwargs in expectations]
    )
    result = batch.validate(
        context.suites.add(suite), result_format={"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS}
    )
    outcomes = [_outcome(item) for item in result.results]
    return SuiteReport(name, len(frame), outcomes, _bad_rows(frame, outcomes))


def _outcome(item: Any) -> ExpectationOutcome:
    config, found = item.expectation_config, item.result or {}
    column = config.kwargs.get("column") or ", ".join(config.kwargs.get("column_list") or [])
    if config.type == "expect_table_columns_to_match_ordered_list":
        column = "(table)"
    raised = (item.exception_info or {}).get("exception_message")
    if raised:
        observed = f"error: {raised.splitlines()[0]}"
    elif "observed_value" in found:
        observed = str(found["observed_value"])
    else:
        observed = f"{found.get('unexpected_count', 0)} of {found.get('element_count', 0)} rows unexpected"
    return ExpectationOutcome(
        expectation=config.type,
        column=column or "(table)",
        passed=bool(item.success),
        checked=found.get("element_count"),
        unexpected=found.get("unexpected_count"),
        observed=observed,
        sample_positions=[int(i) for i in found.get("partial_unexpected_index_list") or []],
    )


def _bad_rows(frame: pd.DataFrame, outcomes: list[ExpectationOutcome]) -> pd.DataFrame:
    samples = [
        frame.iloc[o.sample_positions].assign(broken=f"{o.expectation}({o.column})")
        for o in outcomes
        if not o.passed and o.sample_positions
    ]
    if not samples:
        return pd.DataFrame(columns=["broken", *frame.columns])
    rows = pd.concat(samples)
    return rows[["broken", *frame.columns]].reset_index(drop=True)
