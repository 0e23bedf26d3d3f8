"""Your own rating logs in one shot, without the daemon: `grec ingest` registers and ingests every
file as its partition on GREC_HOME's Dagster instance, refuses bad input in one line without
touching the warehouse, and `dagster asset materialize` then trains on every ingested file."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from assets.ingestion import CONTENT_VERSION, LANDED_FILES
from grec_dagster.cli import main
from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic

FILES = ("ratings-1.csv", "ratings-2.csv")
CONFIG = {
    "source": {
        "kind": "files",
        "interactions_path": "landing/*.csv",  # relative: the folder grec runs in, as a user would write it
        "items_path": "items.csv",
        "columns": {"ts": "timestamp", "value": "rating"},
        "positive_min": 3,
    }
}


def write_ratings(root: Path) -> None:
    """Two rating files of a small shop (200 ratings each, 1-5 stars, epoch seconds) and its catalog;
    one rating has no user, so something is quarantined."""
    shop = generate_synthetic(SyntheticConfig(n_interactions=420, n_days=30))
    log = pd.DataFrame(
        {
            "user_id": shop.interactions.user_id,
            "item_id": shop.interactions.item_id,
            "timestamp": shop.interactions.ts.astype("int64") // 10**6,
            "rating": np.random.default_rng(0).integers(1, 6, len(shop.interactions)),
        }
    ).drop_duplicates(["user_id", "item_id", "timestamp"])[:400]
    log.loc[log.index[7], "user_id"] = ""
    (root / "landing").mkdir(parents=True)
    for name, part in zip(FILES, (log[:200], log[200:]), strict=True):
        part.to_csv(root / "landing" / name, index=False)
    shop.items.to_csv(root / "items.csv", index=False)
    (root / "grec.yaml").write_text(yaml.safe_dump(CONFIG))


def expected_accounting(path: Path) -> str:
    """The file's accounting, from Python's csv module: a blank user is quarantined, a rating under 3 kept below."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    accepted = [row for row in rows if row["user_id"]]
    below = sum(int(row["rating"]) < 3 for row in accepted)
    return (
        f"read {len(rows)} = accepted {len(accepted)} + quarantined {len(rows) - len(accepted)} "
        f"({below} accepted below positive_min: kept, not trained on)"
    )


def environment(root: Path) -> dict[str, str]:
    return {"GREC_HOME": str(root / "grec"), "GREC_CONFIG": str(root / "grec.yaml")}


def grec_ingest_in(root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str):
    """`grec ingest` run in this process (what the subprocess test runs, without a second interpreter)."""
    monkeypatch.chdir(root)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # as in the subprocess: grec's own GREC_HOME/dagster
    for name, value in environment(root).items():
        monkeypatch.setenv(name, value)
    code = main(["ingest", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def warehouse_rows(root: Path) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(root / "grec" / "warehouse.duckdb"), read_only=True) as con:
        return {
            table: con.execute(f"SELECT * FROM {table} ORDER BY source, source_row").df()
            for table in ("interactions", "quarantine")
        }


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A folder of rating logs with its GREC_CONFIG, after `grec ingest` ran there as a user runs it."""
    root = tmp_path_factory.mktemp("own-logs")
    write_ratings(root)
    env = os.environ | environment(root)
    env.pop("DAGSTER_HOME", None)  # grec's own instance: GREC_HOME/dagster, set up by `grec init`
    done = subprocess.run(
        [sys.executable, "-m", "grec_dagster.cli", "ingest"], cwd=root, env=env, capture_output=True, text=True
    )
    return root, done


def test_grec_ingest_registers_and_ingests_every_file(ingested, monkeypatch, capsys):
    root, done = ingested
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in FILES:
        assert f"{name}: {expected_accounting(root / 'landing' / name)}" in lines
    items = len(pd.read_csv(root / "items.csv"))
    assert f"items: read {items} = accepted {items} + quarantined 0" in lines
    assert lines[-1] == (
        f"next: DAGSTER_HOME={root / 'grec' / 'dagster'} "
        "dagster asset materialize -m grec_dagster.definitions --select 'interaction_graph*'"
    )

    with dg.DagsterInstance.from_config(str(root / "grec" / "dagster")) as instance:
        assert instance.get_dynamic_partitions(LANDED_FILES.name) == list(FILES)
        for name in FILES:
            where = dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_interactions"), asset_partitions=[name])
            [record] = instance.fetch_materializations(where, limit=10).records
            version = record.asset_materialization.metadata[CONTENT_VERSION].value
            assert version == hashlib.sha256((root / "landing" / name).read_bytes()).hexdigest()
    stored = warehouse_rows(root)
    assert stored["interactions"].groupby("source").size().to_dict() == {
        name: 199 + (name != FILES[0]) for name in FILES
    }

    again, out, err = grec_ingest_in(root, monkeypatch, capsys)
    assert again == 0, err
    assert [line for line in out if line.startswith("ratings")] == [
        f"{name}: unchanged since it was ingested (`grec ingest --all` ingests it again)" for name in FILES
    ]
    pd.testing.assert_frame_equal(warehouse_rows(root)["interactions"], stored["interactions"])


def test_bad_input_is_refused_in_one_line_and_leaves_the_warehouse_as_it_was(ingested, tmp_path, monkeypatch, capsys):
    root = tmp_path / "copy"
    shutil.copytree(ingested[0], root)
    before = warehouse_rows(root)
    landing = root / "landing"
    good = (landing / "ratings-2.csv").read_bytes()
    (landing / "broken.csv").write_bytes(
        b"user_id,item_id,timestamp,rating\nu1,i000001,1704067409,4\nu2,caf\xe9,1704067410,5\n"
    )
    pd.read_csv(landing / "ratings-2.csv").drop(columns="rating").to_csv(landing / "ratings-2.csv", index=False)

    code, out, err = grec_ingest_in(root, monkeypatch, capsys)
    assert code == 1
    assert err[:2] == [
        # Files are named as GREC_CONFIG's glob names them, here relative to the folder grec runs in.
        "error: file landing/broken.csv, column 'item_id': line 3 is not valid UTF-8 (save the file as UTF-8)",
        "error: file landing/ratings-2.csv, column 'rating': the column mapping names 'rating' for 'value', "
        "but the file has ['user_id', 'item_id', 'timestamp']",
    ]
    assert "ratings-1.csv: unchanged since it was ingested (`grec ingest --all` ingests it again)" in out
    for table, rows in warehouse_rows(root).items():
        pd.testing.assert_frame_equal(rows, before[table])

    # Fixed: the old content of ratings-2.csv is the version already ingested; a resent export of
    # ratings-1.csv's first rows is stored, and its blocking check holds it back from training.
    (landing / "broken.csv").unlink()
    (landing / "ratings-2.csv").write_bytes(good)
    shutil.copy(landing / "ratings-1.csv", landing / "resent.csv")
    code, out, err = grec_ingest_in(root, monkeypatch, capsys)
    assert code == 1 and len(err) == 2
    assert err[0].startswith("error: resent.csv is stored but held back from training: raw_interactions: 1 of ")
    assert "expect_column_values_to_be_in_set(copies)" in err[0]
    assert f"resent.csv: {expected_accounting(landing / 'resent.csv')}" in out
    assert "ratings-2.csv: unchanged since it was ingested (`grec ingest --all` ingests it again)" in out


def test_after_grec_ingest_dagster_trains_on_every_ingested_file_without_the_daemon(ingested, tmp_path):
    root, done = ingested
    assert done.returncode == 0, done.stderr
    run_config = tmp_path / "run.yaml"
    run_config.write_text(yaml.safe_dump({"ops": {"lightgcn_checkpoint": {"config": {"epochs": 2}}}}))
    env = os.environ | environment(root) | {"DAGSTER_HOME": str(root / "grec" / "dagster")}
    dagster = Path(sys.executable).with_name("dagster")
    select = "interaction_graph,lightgcn_checkpoint"  # the start of the README's 'interaction_graph*'
    trained = subprocess.run(
        [dagster, "asset", "materialize", "-m", "grec_dagster.definitions", "--select", select, "-c", str(run_config)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]

    with duckdb.connect(str(root / "grec" / "warehouse.duckdb"), read_only=True) as con:
        positives = con.execute("SELECT source, count(*) FROM interactions WHERE positive GROUP BY 1").fetchall()
        below = con.execute("SELECT count(*) FROM interactions WHERE NOT positive").fetchone()[0]
    assert sorted(source for source, _ in positives) == list(FILES) and below > 0
    with dg.DagsterInstance.from_config(str(root / "grec" / "dagster")) as instance:
        graph = instance.fetch_materializations(dg.AssetKey("interaction_graph"), limit=1).records[0]
        metadata = graph.asset_materialization.metadata
        assert metadata["events"].value == sum(count for _, count in positives)  # every file, positives only
        assert metadata["held_back_rows"].value == 0
        assert instance.fetch_materializations(dg.AssetKey("lightgcn_checkpoint"), limit=1).records
