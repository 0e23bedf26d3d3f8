"""The Great Expectations suites on a real DuckDB warehouse: clean data passes, and each kind of
damage fails the expectation that names it, with counts and the bad rows."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from grec_dagster.data.quality import (
    SAMPLE_ROWS,
    QualityParams,
    SuiteReport,
    check_interactions,
    check_items,
    check_users,
    interaction_expectations,
)
from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
from grec_dagster.data.validation import enforce_row_rules, validate_catalog, validate_interactions
from grec_dagster.data.warehouse import replace_batches, replace_catalog

NOW = pd.Timestamp("2025-06-01")
PARAMS = QualityParams()


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A warehouse holding one clean file, `a.csv`, of a small synthetic shop, with its catalog and users."""
    shop = generate_synthetic(SyntheticConfig(n_interactions=2000, n_days=30))
    batch = enforce_row_rules(validate_interactions(shop.interactions, "a.csv"), PARAMS.row_rules(NOW))
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        replace_batches(con, {"a.csv": batch})
        replace_catalog(con, "items", validate_catalog(shop.items, "item_id", "items"))
        replace_catalog(con, "users", validate_catalog(shop.users, "user_id", "users"))
        yield con


def failed(report: SuiteReport) -> dict[tuple[str, str], int | None]:
    return {(o.expectation, o.column): o.unexpected for o in report.failures}


def test_clean_tables_pass_every_suite(warehouse: duckdb.DuckDBPyConnection):
    for report in (
        check_interactions(warehouse, PARAMS, NOW),
        check_interactions(warehouse, PARAMS, NOW, source="a.csv", previous_rows=1500),
        check_items(warehouse, PARAMS),
        check_users(warehouse, PARAMS),
    ):
        assert report.passed, report.summary()
        assert report.rows > 0 and report.bad_rows.empty


DAMAGE = {
    # name: (statement damaging the warehouse, failing expectation, column, unexpected rows)
    "future event": (
        "INSERT INTO interactions VALUES ('u1', 'i000001', TIMESTAMP '3000-01-01', 'view', 1, 'a.csv', 9001, true)",
        "expect_column_values_to_be_between",
        "ts_ns",
        1,
    ),
    "event before the start": (
        "INSERT INTO interactions VALUES ('u1', 'i000001', TIMESTAMP '1980-01-01', 'view', 1, 'a.csv', 9001, true)",
        "expect_column_values_to_be_between",
        "ts_ns",
        1,
    ),
    "null user id": (
        "INSERT INTO interactions VALUES (NULL, 'i000001', TIMESTAMP '2024-01-02', 'view', 1, 'a.csv', 9001, true)",
        "expect_column_values_to_not_be_null",
        "user_id",
        1,
    ),
    "empty item id": (
        "INSERT INTO interactions VALUES ('u1', '', TIMESTAMP '2024-01-02', 'view', 1, 'a.csv', 9001, true)",
        "expect_column_value_lengths_to_be_between",
        "item_id",
        1,
    ),
    "negative value": (
        "INSERT INTO interactions VALUES ('u1', 'i000001', TIMESTAMP '2024-01-02', 'view', -5, 'a.csv', 9001, true)",
        "expect_column_values_to_be_between",
        "value",
        1,
    ),
    "item missing from the catalog": (
        "DELETE FROM items WHERE item_id = (SELECT item_id FROM interactions ORDER BY source_row LIMIT 1)",
        "expect_column_values_to_be_in_set",
        "in_catalog",
        None,
    ),
    "event logged twice": (
        "INSERT INTO interactions SELECT * REPLACE (source_row + 9000 AS source_row) FROM interactions LIMIT 3",
        "expect_column_values_to_be_in_set",
        "copies",
        6,
    ),
    "an extra column": (
        "ALTER TABLE interactions ADD COLUMN note VARCHAR",
        "expect_table_columns_to_match_ordered_list",
        "(table)",
        None,
    ),
    "a column of the wrong type": (
        "ALTER TABLE interactions ALTER value TYPE VARCHAR",
        "expect_column_values_to_be_of_type",
        "value",
        None,
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_each_kind_of_damage_fails_its_expectation(warehouse: duckdb.DuckDBPyConnection, damage: str):
    statement, expectation, column, unexpected = DAMAGE[damage]
    warehouse.execute(statement)
    report = check_interactions(warehouse, PARAMS, NOW)
    assert not report.passed
    broken = failed(report)
    assert (expectation, column) in broken, report.summary()
    sample = report.bad_rows[report.bad_rows.broken == f"{expectation}({column})"]
    if unexpected is not None:
        assert broken[(expectation, column)] == unexpected and len(sample) == min(unexpected, SAMPLE_ROWS)
    assert expectation in report.summary()


def test_an_event_also_in_another_file_fails_the_later_file(warehouse: duckdb.DuckDBPyConnection):
    """Overlapping exports: b.csv repeats three events of a.csv; its check sees them though each file alone is clean."""
    warehouse.execute("INSERT INTO interactions SELECT * REPLACE ('b.csv' AS source) FROM interactions LIMIT 3")
    warehouse.execute(
        "INSERT INTO interactions SELECT * REPLACE ('b.csv' AS source, 'u-new' AS user_id) FROM interactions LIMIT 20"
    )
    report = check_interactions(warehouse, PARAMS, NOW, source="b.csv")
    assert failed(report) == {("expect_column_values_to_be_in_set", "copies"): 3}
    assert report.rows == 23 and set(report.bad_rows.source) == {"b.csv"}
    assert set(report.bad_rows.copies) == {2}


def test_volume_against_the_previous_batch(warehouse: duckdb.DuckDBPyConnection):
    rows = check_interactions(warehouse, PARAMS, NOW, source="a.csv").rows
    assert check_interactions(warehouse, PARAMS, NOW, source="a.csv", previous_rows=rows * 5).passed
    for previous in (rows * 20, rows // 20):
        report = check_interactions(warehouse, PARAMS, NOW, source="a.csv", previous_rows=previous)
        assert set(failed(report)) == {("expect_table_row_count_to_be_between", "(table)")}
        assert failed(report)[("expect_table_row_count_to_be_between", "(table)")] is None


def test_a_file_with_no_accepted_row_fails(warehouse: duckdb.DuckDBPyConnection):
    report = check_interactions(warehouse, PARAMS, NOW, source="nothing-accepted.csv")
    assert report.rows == 0 and ("expect_table_row_count_to_be_between", "(table)") in failed(report)


def test_catalog_and_user_damage(warehouse: duckdb.DuckDBPyConnection):
    warehouse.execute("INSERT INTO items SELECT * REPLACE (-1.0 AS price) FROM items LIMIT 2")
    warehouse.execute("INSERT INTO users SELECT * FROM users LIMIT 1")
    items, users = check_items(warehouse, PARAMS), check_users(warehouse, PARAMS)
    assert failed(items) == {
        ("expect_column_values_to_be_unique", "item_id"): 4,
        ("expect_column_values_to_be_between", "price"): 2,
    }
    assert failed(users) == {("expect_column_values_to_be_unique", "user_id"): 2}


def test_the_suite_is_data_until_it_runs():
    expectations = interaction_expectations(PARAMS, NOW, has_catalog=False, previous_rows=None)
    kinds = {kind for kind, _ in expectations}
    assert "ExpectColumnValuesToBeInSet" in kinds and all(kind.startswith("Expect") for kind in kinds)
    assert not any(kwargs.get("column") == "in_catalog" for _, kwargs in expectations)
    assert ("ExpectTableRowCountToBeBetween", {"min_value": 1, "max_value": None}) in expectations


def test_gx_runs_quietly(warehouse: duckdb.DuckDBPyConnection, capfd: pytest.CaptureFixture):
    check_interactions(warehouse, PARAMS, NOW)
    out, err = capfd.readouterr()
    assert "Calculating Metrics" not in out + err and "%|" not in out + err


def test_building_the_checks_does_not_import_gx():
    """GX's import costs seconds; loading the definitions builds the checks but must not pay it."""
    probe = (
        "import sys, assets.ingestion as i, assets.ingestion_checks as q; q.build_quality_checks(i.raw_interactions_for('files'));"
        "print('great_expectations' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
