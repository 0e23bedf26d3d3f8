from pathlib import Path

import pandas as pd
import pytest

from grec_dagster.data.errors import DataSourceError
from grec_dagster.data.movielens import load_movielens_100k
from grec_dagster.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS
from grec_dagster.data.sources import SourceParams, make_source


def test_movielens_becomes_canonical_tables(movielens_folder: Path):
    frames = load_movielens_100k(movielens_folder)
    assert len(frames.interactions) == 100_000
    assert list(frames.interactions.columns) == list(INTERACTION_COLUMNS)
    assert list(frames.items.columns) == list(ITEM_COLUMNS)
    assert frames.interactions.user_id.nunique() == 943 and frames.items.item_id.nunique() == 1682
    toy_story = frames.items.set_index("item_id").loc["1"]
    assert toy_story.title == "Toy Story (1995)"
    assert toy_story.category == "Animation|Children's|Comedy"
    assert pd.isna(toy_story.brand)  # unknown, not invented
    assert {"age", "gender", "occupation"} <= set(frames.users.columns)
    assert frames.interactions.ts.min() >= pd.Timestamp("1997-09-01")


def test_movielens_corruption_is_caught(movielens_folder: Path, tmp_path: Path):
    for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        (tmp_path / name).write_bytes((movielens_folder / name).read_bytes())
    with (tmp_path / "ml-100k.item").open("a") as handle:
        handle.write("9999\tInjected\t2020\tDrama\n")
    with pytest.raises(DataSourceError, match="checksum mismatch"):
        load_movielens_100k(tmp_path)


def test_unknown_source_name_is_one_line_error():
    with pytest.raises(DataSourceError) as error:
        make_source(SourceParams(kind="movielens-1b"))
    assert "movielens-1b" in str(error.value) and "synthetic" in str(error.value)
    assert "\n" not in str(error.value)


def _files_source(tmp_path: Path, **overrides) -> object:
    return make_source(SourceParams(kind="files", interactions_path=str(tmp_path / "*.csv"), **overrides))


def test_missing_file_names_the_path(tmp_path: Path):
    with pytest.raises(DataSourceError, match=r"\*\.csv: no file matches"):
        _files_source(tmp_path).batches()


def test_mapping_that_names_a_missing_column(tmp_path: Path):
    (tmp_path / "log.csv").write_text("customer,sku,when\nu1,i1,2024-01-01\n")
    source = _files_source(tmp_path, columns={"user_id": "customer", "item_id": "product", "ts": "when"})
    with pytest.raises(DataSourceError) as error:
        source.interactions("log.csv")
    message = str(error.value)
    assert "log.csv" in message and "'product'" in message and "\n" not in message


def test_empty_log_is_rejected(tmp_path: Path):
    (tmp_path / "log.csv").write_text("user_id,item_id,ts\n")
    with pytest.raises(DataSourceError, match="log.csv.*no rows"):
        _files_source(tmp_path).interactions("log.csv")


def test_files_source_maps_columns_and_quarantines_bad_rows(tmp_path: Path):
    (tmp_path / "log.csv").write_text(
        "customer,sku,when,qty\n"
        "u1,i1,2024-01-01T10:00:00,1\n"
        "u2,i2,1704103200,2\n"  # epoch seconds
        ",i3,2024-01-02,1\n"  # empty user id
        "u3,i4,not-a-date,1\n"
        "u4,i5,2024-01-03,many\n"
    )
    source = _files_source(tmp_path, columns={"user_id": "customer", "item_id": "sku", "ts": "when", "value": "qty"})
    batch = source.interactions("log.csv")
    assert batch.rows_read == 5 and len(batch.accepted) == 2 and len(batch.quarantine) == 3
    assert batch.accepted.ts.tolist() == [pd.Timestamp("2024-01-01 10:00"), pd.Timestamp("2024-01-01 10:00")]
    reasons = batch.quarantine.set_index("source_row")[["column", "reason"]].to_dict("index")
    assert reasons[3] == {"column": "user_id", "reason": "empty or missing id"}
    assert reasons[4]["column"] == "ts" and reasons[5]["column"] == "value"
    assert '"qty": "many"' in batch.quarantine.raw.iloc[-1]


def test_catalog_rows_that_break_a_rule_are_quarantined_not_dropped(tmp_path: Path):
    (tmp_path / "log.csv").write_text("user_id,item_id,ts\nu1,i1,2024-01-01\n")
    (tmp_path / "catalog.csv").write_text(
        "sku,name,price\n"
        "i1,Old title,3.0\n"  # superseded by row 4
        ",No id,1.0\n"
        "i2,Priced oddly,cheap\n"
        "i1,New title,4.5\n"
        "i3,Free sample,\n"  # no price is fine: NULL, not invented
    )
    source = make_source(
        SourceParams(
            kind="files",
            interactions_path=str(tmp_path / "log.csv"),
            items_path=str(tmp_path / "catalog.csv"),
            columns={"item_id": "sku", "title": "name"},
        )
    )
    batch = source.items()
    assert batch.rows_read == 5 and len(batch.accepted) == 2 and len(batch.quarantine) == 3
    kept = batch.accepted.set_index("item_id")
    assert kept.loc["i1", "title"] == "New title" and kept.loc["i1", "price"] == 4.5
    assert pd.isna(kept.loc["i3", "price"])
    reasons = batch.quarantine.set_index("source_row")[["column", "reason"]].to_dict("index")
    assert reasons == {
        1: {"column": "item_id", "reason": "id repeated in a later row 4"},
        2: {"column": "item_id", "reason": "empty or missing id"},
        3: {"column": "price", "reason": "not a non-negative number"},
    }
    assert '"name": "Priced oddly"' in batch.quarantine.set_index("source_row").raw[3]
