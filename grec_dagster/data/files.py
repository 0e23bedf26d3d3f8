"""The user's own logs: CSV or Parquet files found by a path or glob, renamed by a column mapping.

Files are read as text (every column VARCHAR) so that a bad value becomes a quarantined
row with a reason instead of a crash or a silent coercion; typing happens in `validation`.

What is rejected here is the file as a whole, with a one-line `DataSourceError` naming the
file (and the line and column where there is one): an empty file, bytes that are not UTF-8,
a line with more or fewer fields than the header, a missing required column. Once a line
cannot be split into the header's fields, which value belongs to which column is a guess,
and a latin-1 file is wrong on every row that has an accent, so no row of it is trusted.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

import duckdb
import pandas as pd

from grec_dagster.data.errors import DataSourceError

REQUIRED_INTERACTION_COLUMNS = ("user_id", "item_id", "ts")
OPTIONAL_INTERACTION_COLUMNS = ("event", "value")
LIKELY_DELIMITERS = (",", ";", "\t", "|")


def matching_files(pattern: str) -> list[Path]:
    """Every file the path or glob names, sorted by path; empty when there is none."""
    return sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser())) if Path(p).is_file())


def content_version(path: Path) -> str:
    """The SHA-256 of the file's bytes: a file rewritten with new content gets a new version, one
    merely touched or copied in again keeps its version."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_files(pattern: str) -> list[Path]:
    """Every file the path or glob names, sorted; an error when there is none."""
    matches = matching_files(pattern)
    if not matches:
        raise DataSourceError("no file matches this path or glob", file=pattern)
    return matches


def read_text_table(path: Path, delimiter: str | None = None) -> pd.DataFrame:
    """Read one CSV or Parquet file with every value as text and a 1-based `source_row`."""
    if path.stat().st_size == 0:
        raise DataSourceError("the file is empty (not even a header line)", file=str(path))
    is_parquet = path.suffix.lower() in {".parquet", ".pq"}
    con = duckdb.connect()
    if is_parquet:
        query = "SELECT * FROM read_parquet($path)"
        params: dict[str, object] = {"path": str(path)}
    else:
        # store_rejects records broken lines (with line number and column) instead of failing on
        # the first one; it also keeps the sniffer from taking a ragged line for the header.
        options = "all_varchar=true, header=true, auto_detect=true, store_rejects=true"
        if delimiter:
            options += ", delim=$delim"
        query = f"SELECT * FROM read_csv($path, {options})"
        params = {"path": str(path)} | ({"delim": delimiter} if delimiter else {})
    try:
        frame = con.execute(f"SELECT *, row_number() OVER () AS source_row FROM ({query})", params).df()
        if not is_parquet:
            _raise_on_broken_lines(con, path)
    except duckdb.Error as error:
        raise DataSourceError(f"cannot read: {str(error).splitlines()[0]}", file=str(path)) from error
    finally:
        con.close()
    text_columns = [c for c in frame.columns if c != "source_row"]
    frame[text_columns] = frame[text_columns].astype("string")
    return frame


def _raise_on_broken_lines(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Reject the file when DuckDB could not split some line into the header's fields."""
    broken = con.execute(
        "SELECT line, column_name, error_type, error_message, (SELECT count(DISTINCT line) FROM reject_errors) "
        "FROM reject_errors ORDER BY line, column_idx LIMIT 1"
    ).fetchone()
    if broken is None:
        return
    line, column, error_type, message, count = broken
    if error_type == "INVALID ENCODING":
        what = "is not valid UTF-8 (save the file as UTF-8)"
    else:
        what = f"cannot be parsed ({error_type.lower()}: {message.splitlines()[0]})"
    others = f"; {count - 1} more broken line(s)" if count > 1 else ""
    raise DataSourceError(f"line {line} {what}{others}", file=str(path), column=column)


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
                f"{[c for c in frame.columns if c != 'source_row']}{_delimiter_hint(frame)}",
                file=str(path),
                column=theirs,
            )
    source_of = {ours: mapping.get(ours, ours) for ours in wanted}
    for ours in required:
        if source_of[ours] not in frame.columns:
            raise DataSourceError(
                f"required column {ours!r} is missing (map it in `columns`){_delimiter_hint(frame)}",
                file=str(path),
                column=ours,
            )
    out = pd.DataFrame({ours: frame[theirs] for ours, theirs in source_of.items() if theirs in frame.columns})
    if keep_others:
        used = set(source_of.values()) | {"source_row"}
        for column in frame.columns:
            if column not in used:
                out[column] = frame[column]
    out["source_row"] = frame["source_row"]
    return out


def _delimiter_hint(frame: pd.DataFrame) -> str:
    """A header read as one column that holds another delimiter is the commonest wrong-delimiter symptom."""
    header = [c for c in frame.columns if c != "source_row"]
    if len(header) == 1 and any(d in header[0] for d in LIKELY_DELIMITERS):
        return f"; the header was read as the single column {header[0]!r}: is `delimiter` right?"
    return ""
