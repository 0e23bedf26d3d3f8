"""Property tests: random mixes of good and bad rows never lose a row, and what is accepted obeys the schema."""

import csv
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grec_dagster.data.quality import QualityParams
from grec_dagster.data.schema import INTERACTION_COLUMNS, QUARANTINE_COLUMNS
from grec_dagster.data.sources import SourceParams, make_source
from grec_dagster.data.validation import (
    CONTROL_CHARACTERS,
    EVENT_KEY,
    WHOLE_ROW,
    IngestedBatch,
    RowRules,
    enforce_row_rules,
    validate_interactions,
)

NOW = pd.Timestamp("2025-06-01")
RULES = QualityParams(value_max=1000.0, max_text_length=12).row_rules(NOW, catalog=pd.Index(["i1", "i2", "i3"]))


def assert_schema_holds(batch: IngestedBatch, rules: RowRules) -> None:
    """Every accepted row satisfies the schema and every rule; every quarantined row says where and why."""
    accepted, quarantine = batch.accepted, batch.quarantine
    assert len(accepted) + len(quarantine) == batch.rows_read
    assert accepted.dtypes.astype(str).to_dict() == INTERACTION_COLUMNS
    assert quarantine.dtypes.astype(str).to_dict() == QUARANTINE_COLUMNS
    for column in ("user_id", "item_id", "event"):
        text = accepted[column]
        assert text.notna().all() and (text.str.strip() != "").all()
        assert (text.str.len() <= rules.max_text_length).all()
        assert not text.str.contains(CONTROL_CHARACTERS, regex=True).any()
    for column in ("user_id", "item_id"):
        assert not accepted[column].str.lower().isin(["nan", "null", "none"]).any()
    assert accepted.ts.between(rules.ts_min, rules.ts_max).all()
    assert np.isfinite(accepted.value).all() and accepted.value.between(rules.value_min, rules.value_max).all()
    assert accepted.item_id.isin(rules.catalog).all()
    assert not accepted.duplicated(EVENT_KEY).any()
    assert quarantine.column.isin([*INTERACTION_COLUMNS, WHOLE_ROW]).all() and (quarantine.reason.str.len() > 0).all()
    rows = pd.concat([accepted.source_row, quarantine.source_row])
    assert sorted(rows) == list(range(1, batch.rows_read + 1))


# --- any text at all, straight into the validator -------------------------------------------

ids = st.one_of(
    st.sampled_from(["i1", "i2", "i3", "u1", "", "  ", "NaN", "null", "None", " i1 "]), st.text(max_size=20)
)
timestamps = st.one_of(
    st.sampled_from(["2024-01-01T10:00:00", "2024-01-01T10:00:00", "-86400", "3000-01-01", "1704103200", "1e400"]),
    st.datetimes().map(lambda t: t.isoformat()),
    st.integers(-(10**15), 10**15).map(str),
    st.text(max_size=12),
)
values = st.one_of(
    st.sampled_from(["", "1", "1", "-3", "inf", "nan", "1e400", "abc", "999.5", "1001"]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)
rows = st.lists(st.tuples(ids, ids, timestamps, st.sampled_from(["view", "cart", "", "\x1b"]), values), max_size=40)


@settings(max_examples=100, deadline=None)
@given(rows)
def test_any_rows_are_accepted_or_quarantined_never_lost(raw_rows: list[tuple[str, ...]]):
    frame = pd.DataFrame(raw_rows, columns=["user_id", "item_id", "ts", "event", "value"], dtype="string")
    frame["source_row"] = np.arange(1, len(frame) + 1)
    batch = enforce_row_rules(validate_interactions(frame, "mixed.csv"), RULES)
    assert batch.rows_read == len(raw_rows)
    assert_schema_holds(batch, RULES)


# --- labelled good and bad rows, through a real CSV file --------------------------------------

BAD_ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    # kind: (column the quarantine names, a row of that kind)
    "blank user": ("user_id", ("", "i1", "2024-03-01T10:00:00", "view", "1")),
    "NaN item": ("item_id", ("u1", "NaN", "2024-03-01T10:00:00", "view", "1")),
    "garbled time": ("ts", ("u1", "i1", "yesterday", "view", "1")),
    "far future": ("ts", ("u1", "i1", "2999-12-31T00:00:00", "view", "1")),
    "before the start": ("ts", ("u1", "i1", "-86400", "view", "1")),
    "text value": ("value", ("u1", "i1", "2024-03-01T10:00:00", "view", "lots")),
    "negative value": ("value", ("u1", "i1", "2024-03-01T10:00:00", "refund", "-3")),
    "long id": ("user_id", ("u" * 13, "i1", "2024-03-01T10:00:00", "view", "1")),
    "unknown item": ("item_id", ("u1", "i404", "2024-03-01T10:00:00", "view", "1")),
}

labelled = st.lists(
    st.one_of(
        st.tuples(
            st.just("good"),
            st.integers(0, 10**6).map(
                lambda n: (f"u{n % 97}", f"i{n % 3 + 1}", f"2024-03-01T10:{n % 60:02d}:{n // 60 % 60:02d}", "view", "1")
            ),
        ),
        st.sampled_from(sorted(BAD_ROWS)).map(lambda kind: (kind, BAD_ROWS[kind][1])),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labelled)
def test_labelled_rows_in_a_file_land_where_they_belong(mix: list[tuple[str, tuple[str, ...]]]):
    with TemporaryDirectory() as folder:
        path = Path(folder) / "mixed.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["user_id", "item_id", "ts", "event", "value"])
            writer.writerows(row for _, row in mix)
        source = make_source(SourceParams(kind="files", interactions_path=str(path)))
        batch = enforce_row_rules(source.interactions("mixed.csv"), RULES)

    assert_schema_holds(batch, RULES)
    seen: set[tuple[str, ...]] = set()
    expected: dict[int, str] = {}
    for row_number, (kind, row) in enumerate(mix, start=1):
        if kind != "good":
            expected[row_number] = BAD_ROWS[kind][0]
        elif row in seen:
            expected[row_number] = WHOLE_ROW
        else:
            seen.add(row)
    assert batch.quarantine.set_index("source_row").column.to_dict() == expected
