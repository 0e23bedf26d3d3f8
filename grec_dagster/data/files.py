"""The user's own logs: CSV or Parquet files found by a path or glob, renamed by a column mapping.

Files are read as text (every column VARCHAR) so that a bad value becomes a quarantined
row with a reason instead of a crash or a silent coercion; typing happens in `validation`.
"""

from __future__ import annotations

import glob
from pathlib import Path

import duckdb
import pandas as pd

from grec_dagster.data.errors import DataSourceError

REQUIRED_INTERACTION_COLUMNS = ("user_id", "item_id", "ts")
OPTIONAL_INTERACTION_COLUMNS = ("event", "value")


def resolve_files(pattern: str) -> list[Path]:
    """Every file the path or glob names, sorted; an error when there is none."""
    matches = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser())) if Path(p).is_file())
    if not matches:
        raise DataSourceError("no file matches this path or glob", file=pattern)
    return matches


def read_text_table(path: Path, delimiter: str | None = None) -> pd.DataFrame:
    """Read one CSV or Parquet file with every value as text and a 1-based `source_row`."""
    con = duckdb.connect()
    if path.suffix.lower() in {".parquet", ".pq"}:
        query = "SELECT * FROM read_parquet($path)"
        params: dict[str, object] = {"path": str(path)}
    else:
        options = "all_varchar=true, header=true, auto_detect=true"
        if delimiter:
            options += ", delim=$delim"
        query = f"SELECT * FROM read_csv($path, {options})"
        params = {"path": str(path)} | ({"delim": delimiter} if delimiter else {})
    try:
        frame = con.execute(f"SELECT *, row_number() OVER () AS source_row FROM ({query})", params).df()
    except duckdb.Error as error:
        raise DataSourceError(f"cannot read: {str(error).splitlines()[0]}", file=str(path)) from error
    finally:
        con.close()
    text_columns = [c for c in frame.columns if c != "source_row"]
    frame[text_columns] = frame[text_columns].astype("string")
    return frame


def map_columns(
    frame: pd.DataFrame,
    mapping: dict[str, str],
    wanted: tuple[str, ...],
    required: tuple[str, ...],
    path: Path,
    keep_others: bool = False,
) -> pd.DataFrame:
    """Rename the user's columns to ours (`mapping` is ours -> theirs; unmapped names match as is).

    A mapping that names a column the file lacks, or a required column that is absent, is an
    error naming the file and the column, raised before anything is ingested.
    """
    for ours, theirs in mapping.items():
        if theirs not in frame.columns:
            raise DataSourceError(
                f"the column mapping names {theirs!r} for {ours!r}, but the file has "
                f"{[c for c in frame.columns if c != 'source_row']}",
                file=str(path),
                column=theirs,
            )
    source_of = {ours: mapping.get(ours, ours) for ours in wanted}
    for ours in required:
        if source_of[ours] not in frame.columns:
            raise DataSourceError(f"required column {ours!r} is missing (map it in `columns`)", file=str(path), column=ours)
    out = pd.DataFrame({ours: frame[theirs] for ours, theirs in source_of.items() if theirs in frame.columns})
    if keep_others:
        used = set(source_of.values()) | {"source_row"}
        for column in frame.columns:
            if column not in used:
                out[column] = frame[column]
    out["source_row"] = frame["source_row"]
    return out
