"""One error type for bad input, so callers can tell it from bugs and show it in one line."""

from __future__ import annotations


class DataSourceError(ValueError):
    """Bad input found before any training starts: says what is wrong and where."""

    def __init__(self, reason: str, *, file: str | None = None, row: int | None = None, column: str | None = None):
        self.reason = reason
        self.file = file
        self.row = row
        self.column = column
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"row {row}" if row is not None else "",
                f"column {column!r}" if column else "",
            )
            if part
        )
        super().__init__(f"{where}: {reason}" if where else reason)
