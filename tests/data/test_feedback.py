"""Explicit ratings as implicit feedback: with `positive_min`, a rating below it is kept in the
warehouse, marked not `positive`, counted, and never reaches training; without it every accepted
event is a positive, as before."""

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from grec_dagster.data.errors import DataSourceError
from grec_dagster.data.quality import QualityParams, check_interactions
from grec_dagster.data.sources import SourceParams, make_source
from grec_dagster.data.validation import IngestedBatch, enforce_row_rules
from grec_dagster.data.warehouse import ensure_tables, replace_batches, rows_below_positive_min, trusted_interactions

NOW = pd.Timestamp("2025-06-01")
MAPPING = {"user_id": "user", "item_id": "movie", "ts": "timestamp", "value": "rating"}


@pytest.fixture
def ratings(tmp_path: Path) -> pd.DataFrame:
    """A rating log written to `landing/ratings.csv`: 300 seeded ratings 1-5, and one blank rating."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "user": [f"u{u}" for u in rng.integers(0, 30, 300)],
            "movie": [f"m{m}" for m in rng.integers(0, 40, 300)],
            "timestamp": 1_700_000_000 + np.arange(300) * 600,
            "rating": rng.integers(1, 6, 300).astype(str),
        }
    )
    frame.loc[17, "rating"] = ""
    (tmp_path / "landing").mkdir()
    frame.to_csv(tmp_path / "landing" / "ratings.csv", index=False)
    return frame


def ingest(tmp_path: Path, **source: object) -> IngestedBatch:
    params = SourceParams(kind="files", interactions_path=str(tmp_path / "landing" / "*.csv"), **source)
    return enforce_row_rules(make_source(params).interactions("ratings.csv"), QualityParams().row_rules(NOW))


def test_ratings_below_positive_min_are_kept_marked_and_not_trained_on(tmp_path: Path, ratings: pd.DataFrame):
    batch = ingest(tmp_path, columns=MAPPING, positive_min=3)
    # An independent reading of the file: which rows are positives, which below, which lack a rating.
    given = ratings.rating != ""
    above = given & (pd.to_numeric(ratings.rating.where(given)) >= 3)
    assert batch.quarantine.source_row.tolist() == [18]  # the blank rating, on line 18 of the data
    assert batch.quarantine.reason.tolist() == ["no value, which positive_min 3.0 needs"]
    accepted = batch.accepted.set_index("source_row")
    assert accepted.positive.tolist() == above[given].tolist()
    below = int((given & ~above).sum())
    assert batch.rows_below_positive_min == below > 0
    assert batch.accounting() == (
        f"read 300 = accepted 299 + quarantined 1 ({below} accepted below positive_min: kept, not trained on)"
    )

    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        replace_batches(con, {"ratings.csv": batch})
        stored = con.execute("SELECT count(*) FROM interactions").fetchone()[0]
        trained = trusted_interactions(con)
        assert stored == 299 and rows_below_positive_min(con) == below
        expected = ratings[above].rename(columns={"user": "user_id", "movie": "item_id"})[["user_id", "item_id"]]
        pd.testing.assert_frame_equal(
            trained[["user_id", "item_id"]].astype(object), expected.reset_index(drop=True).astype(object)
        )
        assert check_interactions(con, QualityParams(), NOW, "ratings.csv").passed  # the marking is in the schema


def test_without_positive_min_every_accepted_rating_is_a_positive(tmp_path: Path, ratings: pd.DataFrame):
    batch = ingest(tmp_path, columns=MAPPING)
    assert len(batch.accepted) == 300 and batch.accepted.positive.all()  # a blank value means 1.0, as before
    assert batch.rows_below_positive_min == 0 and batch.accounting() == "read 300 = accepted 300 + quarantined 0"


def test_positive_min_without_a_rating_column_names_file_and_column(tmp_path: Path, ratings: pd.DataFrame):
    without_value = {ours: theirs for ours, theirs in MAPPING.items() if ours != "value"}
    ratings.drop(columns="rating").to_csv(tmp_path / "landing" / "ratings.csv", index=False)
    with pytest.raises(DataSourceError) as raised:
        ingest(tmp_path, columns=without_value, positive_min=4)
    message = str(raised.value)
    assert "\n" not in message and f"file {tmp_path / 'landing' / 'ratings.csv'}" in message
    assert "column 'value'" in message and "positive_min 4.0" in message


def test_a_warehouse_from_before_positive_min_counts_its_rows_as_positives(tmp_path: Path, ratings: pd.DataFrame):
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.execute(
            "CREATE TABLE interactions (user_id VARCHAR, item_id VARCHAR, ts TIMESTAMP, event VARCHAR, "
            "value DOUBLE, source VARCHAR, source_row BIGINT)"
        )
        con.execute("INSERT INTO interactions VALUES ('u1', 'm1', TIMESTAMP '2024-01-02', 'rating', 1, 'old.csv', 1)")
        ensure_tables(con)
        assert con.execute("SELECT positive FROM interactions").fetchall() == [(True,)]
        # New batches land beside the old rows, each column by name.
        replace_batches(con, {"ratings.csv": ingest(tmp_path, columns=MAPPING, positive_min=3)}, keep=["old.csv"])
        trained = trusted_interactions(con)
        assert trained.iloc[-1].tolist() == ["u1", "m1", pd.Timestamp("2024-01-02")]  # the newest event
        given = ratings.rating != ""
        assert len(trained) == 1 + (pd.to_numeric(ratings.rating.where(given)) >= 3).sum()
