"""PNG figures for Dagster metadata, MLflow artifacts and report folders: the towers' training
curves with their grokking events marked, and the models side by side per segment.

Figures are plain `matplotlib.figure.Figure` objects rendered by the Agg canvas into bytes: no
pyplot, so no global backend or figure registry, and no display needed. The Dagster UI shows
an image inside a markdown metadata entry from a base64 data URI (`markdown_image`).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from grec_dagster.grokking import GrokkingEvent

DPI = 80


def training_curves(
    histories: Mapping[str, pd.DataFrame], events: Mapping[str, Sequence[GrokkingEvent]], metric: str = "ndcg@20"
) -> bytes:
    """One panel per tower: training loss (left axis) and validation `metric` (right axis) per
    epoch, a dashed line at each grokking jump. `histories[tower]` has `epoch`, `train_loss`, `metric`."""
    towers = list(histories)
    figure = Figure(figsize=(4.2 * max(len(towers), 1), 3.2))
    axes = figure.subplots(1, max(len(towers), 1), squeeze=False)
    for axis, tower in zip(axes[0], towers, strict=False):
        history = histories[tower]
        axis.plot(history["epoch"], history["train_loss"], color="tab:blue", label="train loss")
        axis.set_xlabel("epoch")
        axis.set_ylabel("train loss", color="tab:blue")
        axis.set_title(tower)
        if metric in history:
            right = axis.twinx()
            right.plot(history["epoch"], history[metric], color="tab:orange", label=f"valid {metric}")
            right.set_ylabel(f"valid {metric}", color="tab:orange")
        for event in events.get(tower, ()):
            axis.axvline(event.epoch, color="tab:red", linestyle="--", linewidth=1)
            axis.annotate(
                f"grokked ({event.segment})",
                (event.epoch, 1.0),
                xycoords=("data", "axes fraction"),
                va="top",
                fontsize=7,
                color="tab:red",
            )
    return _png(figure)


def segment_bars(results: pd.DataFrame, metric: str = "ndcg", k: int = 20) -> bytes:
    """Grouped bars of `metric@k` per segment (groups) and model (bars), from the evaluator's long table."""
    chosen = results[(results["metric"] == metric) & (results["k"] == k)]
    table = chosen.pivot_table(index="segment", columns="model", values="value", sort=False)
    figure = Figure(figsize=(min(14.0, 2.0 + 0.16 * len(table.index) * len(table.columns)), 3.8))
    axis = figure.subplots()
    table.plot.bar(ax=axis, width=0.8, rot=0)
    axis.set_ylabel(f"{metric}@{k}")
    axis.set_xlabel("")
    axis.legend(fontsize=7, ncols=2)
    return _png(figure)


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that shows `png` inline, for `dg.MetadataValue.md`."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _png(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
