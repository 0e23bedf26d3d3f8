"""Row rules at ingestion: each row is either accepted (typed) or quarantined with its reason.

Nothing is dropped silently: `IngestedBatch.rows_read == len(accepted) + len(quarantine)` is
checked for every batch. Rules are vectorized; a row that breaks several keeps the first reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grec_dagster.data.schema import INTERACTION_COLUMNS, QUARANTINE_COLUMNS, conform

EPOCH_MILLISECONDS_ABOVE = 1e11
"""A numeric timestamp above this is read as milliseconds (1e11 s is the year 5138)."""


@dataclass
class IngestedBatch:
    """One ingested input (a file, or a built-in source): accepted rows, rejected rows, and the count read."""

    accepted: pd.DataFrame
    quarantine: pd.DataFrame
    rows_read: int

    def __post_init__(self) -> None:
        if len(self.accepted) + len(self.quarantine) != self.rows_read:
            raise AssertionError(
                f"row accounting broken: {len(self.accepted)} accepted + {len(self.quarantine)} quarantined "
                f"!= {self.rows_read} read"
            )


def parse_timestamps(values: pd.Series, timestamp_format: str = "auto") -> pd.Series:
    """Text or numbers to UTC-naive datetimes; unparseable values become NaT.

    `auto` reads numbers as epoch seconds (milliseconds when very large) and text as ISO-8601;
    `unix_s`/`unix_ms` force an epoch unit; anything else is a strftime format.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values if values.dt.tz is None else values.dt.tz_convert("UTC").dt.tz_localize(None)
        return parsed.astype("datetime64[us]")
    text = values.astype("string").str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    if timestamp_format in ("unix_s", "unix_ms"):
        unit = "s" if timestamp_format == "unix_s" else "ms"
        seconds = numbers if unit == "s" else numbers / 1000.0
        return _from_epoch_seconds(seconds)
    if timestamp_format == "auto":
        from_numbers = _from_epoch_seconds(numbers.where(numbers < EPOCH_MILLISECONDS_ABOVE, numbers / 1000.0))
        from_text = pd.to_datetime(text.where(numbers.isna()), errors="coerce", utc=True, format="ISO8601")
        from_text = from_text.dt.tz_localize(None).astype("datetime64[us]")
        return from_numbers.fillna(from_text)
    parsed = pd.to_datetime(text, errors="coerce", format=timestamp_format, utc=True)
    return parsed.dt.tz_localize(None).astype("datetime64[us]")


def _from_epoch_seconds(seconds: pd.Series) -> pd.Series:
    in_range = seconds.where((seconds > -1e10) & (seconds < 1e11))
    return pd.to_datetime(in_range * 1e6, unit="us", errors="coerce").astype("datetime64[us]")


def _is_blank(values: pd.Series) -> np.ndarray:
    text = values.astype("string")
    return (text.isna() | (text.str.strip() == "") | text.str.lower().isin(["nan", "null", "none"])).to_numpy(bool)


def validate_interactions(
    frame: pd.DataFrame,
    source: str,
    *,
    timestamp_format: str = "auto",
    ts_min: pd.Timestamp | None = None,
    ts_max: pd.Timestamp | None = None,
    default_event: str = "interaction",
    original: pd.DataFrame | None = None,
) -> IngestedBatch:
    """Type a raw interaction frame and split it into accepted rows and quarantined rows.

    `frame` holds our column names (after `files.map_columns`) and a `source_row`; values may be
    text or already typed. Rules, in order: ids present; timestamp parses; timestamp within
    [ts_min, ts_max]; value, when given, is a finite number. `original` holds the rows as the
    user wrote them (their column names), kept verbatim in the quarantine.
    """
    n = len(frame)
    source_row = frame["source_row"].to_numpy("int64") if "source_row" in frame else np.arange(n, dtype="int64")
    ts = parse_timestamps(frame["ts"], timestamp_format)
    value = (
        pd.to_numeric(frame["value"], errors="coerce").astype("float64")
        if "value" in frame
        else pd.Series(1.0, index=frame.index)
    )
    value_given = ~_is_blank(frame["value"]) if "value" in frame else np.zeros(n, bool)

    rules: list[tuple[str, np.ndarray, str]] = [
        ("user_id", _is_blank(frame["user_id"]), "empty or missing id"),
        ("item_id", _is_blank(frame["item_id"]), "empty or missing id"),
        ("ts", ts.isna().to_numpy(), "timestamp cannot be parsed"),
    ]
    if ts_min is not None:
        rules.append(("ts", (ts < ts_min).fillna(False).to_numpy(bool), f"timestamp before {ts_min}"))
    if ts_max is not None:
        rules.append(("ts", (ts > ts_max).fillna(False).to_numpy(bool), f"timestamp after {ts_max}"))
    rules.append(("value", value_given & ~np.isfinite(value.to_numpy()), "value is not a finite number"))

    reason = np.full(n, None, dtype=object)
    column = np.full(n, None, dtype=object)
    for name, broken, why in rules:
        fresh = broken & (reason == None)  # noqa: E711 - elementwise comparison on an object array
        reason[fresh] = why
        column[fresh] = name
    bad = reason != None  # noqa: E711

    event = frame["event"].astype("string").fillna(default_event) if "event" in frame else default_event
    typed = pd.DataFrame(
        {
            "user_id": frame["user_id"].astype("string").str.strip(),
            "item_id": frame["item_id"].astype("string").str.strip(),
            "ts": ts,
            "event": event,
            "value": value.where(value_given, 1.0) if "value" in frame else value,
            "source": source,
            "source_row": source_row,
        }
    )
    quarantine = pd.DataFrame(
        {
            "source": source,
            "source_row": source_row[bad],
            "column": column[bad],
            "reason": reason[bad],
            "raw": _rows_as_json((frame if original is None else original).loc[bad]),
        }
    )
    return IngestedBatch(
        accepted=conform(typed.loc[~bad], INTERACTION_COLUMNS),
        quarantine=conform(quarantine, QUARANTINE_COLUMNS),
        rows_read=n,
    )


def _rows_as_json(rows: pd.DataFrame) -> list[str]:
    """The rejected row as the user wrote it, so it can be fixed and replayed."""
    records = rows.drop(columns=["source_row"], errors="ignore").astype("string").to_dict(orient="records")
    return [json.dumps({k: (None if pd.isna(v) else v) for k, v in record.items()}) for record in records]
