"""The continuous-time graph: time-aligned batches, histories and cut times, save and load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grec_dagster.graph.interactions import TEST, TRAIN, VALID, build_graph
from grec_dagster.graph.splits import split_labels
from grec_dagster.graph.temporal import TemporalGraph, build_temporal_graph, chronological_batches


@settings(max_examples=60, deadline=None)
@given(times=st.lists(st.integers(0, 8), max_size=80), size=st.integers(1, 12))
def test_batches_cover_the_events_in_order_and_never_split_a_timestamp(times: list[int], size: int) -> None:
    ts = torch.tensor(sorted(times), dtype=torch.long)
    batches = chronological_batches(ts, size)
    assert [start for start, _ in batches] == [0, *(end for _, end in batches)][: len(batches)]
    assert (batches[-1][1] if batches else 0) == len(times)
    for start, end in batches:
        assert end > start
        assert start == 0 or ts[start - 1] < ts[start], "a timestamp spans two batches"
        assert end - start <= size or ts[start] == ts[end - 1], "only a single timestamp may exceed the size"


def log(protocol: str) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    seconds = np.sort(rng.integers(0, 5_000, 300))
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 20, 300).astype(str),
            "item_id": rng.integers(0, 30, 300).astype(str),
            "ts": pd.to_datetime(seconds, unit="s").astype("datetime64[us]"),
        }
    )
    return frame, split_labels(frame, protocol)


def temporal_of(protocol: str) -> TemporalGraph:
    frame, labels = log(protocol)
    graph = build_graph(frame, labels, protocol)
    return build_temporal_graph(graph, torch.randn(graph.n_users, 3), torch.randn(graph.n_items, 4))


def test_temporal_histories_are_everything_before_the_cut() -> None:
    temporal = temporal_of("temporal")
    for split in (VALID, TEST):
        cut = temporal.cut_time(split)
        history = temporal.history_before(split)
        assert cut == int(temporal.ts[temporal.split == split].min())
        assert torch.equal(history.ts, temporal.ts[temporal.ts < cut])
        assert history.user_csr.num_edges == history.item_csr.num_edges == history.ts.numel()


def test_random_protocol_ranks_after_the_whole_history() -> None:
    temporal = temporal_of("random")
    for split in (VALID, TEST):
        history = temporal.history_before(split)
        assert int(history.ts.max()) < temporal.cut_time(split)
        assert not bool(torch.isin(history.split, torch.tensor([split], dtype=torch.uint8)).any())
    assert set(temporal.history_before(TEST).split.tolist()) == {TRAIN, VALID}


def test_save_and_load_give_the_same_graph(tmp_path) -> None:
    temporal = temporal_of("temporal")
    temporal.save(tmp_path / "graph.safetensors")
    loaded = TemporalGraph.load(tmp_path / "graph.safetensors")
    assert loaded.source_fingerprint == temporal.source_fingerprint
    for name in ("users", "items", "ts", "split", "user_features", "item_features"):
        assert torch.equal(getattr(loaded, name), getattr(temporal, name))
    for csr in ("user_csr", "item_csr"):
        for name in ("rowptr", "col", "edge_id", "time", "search_key", "distinct_time"):
            assert torch.equal(getattr(getattr(loaded, csr), name), getattr(getattr(temporal, csr), name))


def test_features_must_cover_every_node() -> None:
    frame, labels = log("temporal")
    graph = build_graph(frame, labels, "temporal")
    with pytest.raises(ValueError, match="features cover"):
        build_temporal_graph(graph, torch.zeros(graph.n_users - 1, 3), torch.zeros(graph.n_items, 4))
