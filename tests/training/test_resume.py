"""A training run survives being stopped: by an exception, by SIGKILL, by a crash mid-save.

Resuming is exact on CPU: the checkpoint holds all the state the next epoch reads (weights,
AdamW moments and step count, the batch generator's and torch's RNG states, early-stopping
counters, history, best weights), and every op of a LightGCN step is deterministic at a fixed
thread count. So a resumed run ends bit for bit where an uninterrupted one does; only the
wall-clock `seconds` of each epoch differ.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch

from grec_dagster.graph.interactions import InteractionGraph
from grec_dagster.storage import load_tensors
from grec_dagster.training.loop import TrainParams

from .lightgcn_worker import Crash, Run, read, run, shop_graph

WORKER = Path(__file__).with_name("lightgcn_worker.py")

SMALL = 6_000
SMALL_TRAIN = TrainParams(epochs=30, lr=0.01, batch_size=128, patience=2)
"""Early stopping ends it after a dozen epochs, in about a second."""

KILLED = 20_000
KILLED_TRAIN = TrainParams(epochs=40, lr=0.01, batch_size=256, patience=4)
"""About twenty epochs of ~0.2 s: plenty of time to kill it a few epochs in."""


def assert_same_run(resumed: Run, uninterrupted: Run) -> None:
    assert resumed.same_history() == uninterrupted.same_history()
    assert (resumed.best_epoch, resumed.best_metric) == (uninterrupted.best_epoch, uninterrupted.best_metric)
    assert torch.equal(resumed.user_embedding, uninterrupted.user_embedding)
    assert torch.equal(resumed.item_embedding, uninterrupted.item_embedding)


def checkpointed_epochs(path: Path) -> int:
    return load_tensors(path)[1]["next_epoch"]


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the training process ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def small_graph() -> InteractionGraph:
    return shop_graph(SMALL)


@pytest.fixture(scope="module")
def uninterrupted(small_graph: InteractionGraph) -> Run:
    result = run(small_graph, SMALL_TRAIN)
    assert result.best_epoch + SMALL_TRAIN.patience + 1 == len(result.history) < SMALL_TRAIN.epochs
    return result


def test_killed_process_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    last = tmp_path / "state" / "last.safetensors"
    command = [
        *(sys.executable, str(WORKER), str(tmp_path / "resumed")),
        *("--interactions", str(KILLED), "--train", KILLED_TRAIN.model_dump_json()),
        *("--checkpoint-dir", str(last.parent)),
    ]
    first = subprocess.Popen(command)
    try:
        wait_until(lambda: last.exists() and checkpointed_epochs(last) >= 3, first)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
    assert first.wait() == -signal.SIGKILL
    killed_at = checkpointed_epochs(last)  # a kill mid-write would leave this file whole, too

    second = subprocess.Popen(command)
    try:
        uninterrupted = run(shop_graph(KILLED), KILLED_TRAIN)  # here, while the second process trains
        assert second.wait(timeout=300) == 0
    finally:
        second.kill()
    resumed = read(tmp_path / "resumed" / "rank0.safetensors")

    assert 3 <= killed_at < uninterrupted.best_epoch  # the best weights come from after the restart
    assert resumed.resumed_from == killed_at
    assert resumed.epochs_run == list(range(killed_at, len(uninterrupted.history)))
    assert_same_run(resumed, uninterrupted)


def test_exception_before_the_last_checkpoint_resumes_to_the_same_end(
    small_graph: InteractionGraph, uninterrupted: Run, tmp_path: Path
) -> None:
    """Crash in the last epoch: resuming must restore the best weights and the patience spent."""
    last_epoch = len(uninterrupted.history) - 1
    with pytest.raises(Crash):
        run(small_graph, SMALL_TRAIN, tmp_path, crash_in_epoch=last_epoch)
    assert checkpointed_epochs(tmp_path / "last.safetensors") == last_epoch

    resumed = run(small_graph, SMALL_TRAIN, tmp_path)

    assert resumed.resumed_from == last_epoch
    assert resumed.epochs_run == [last_epoch]
    assert_same_run(resumed, uninterrupted)


def test_crash_while_saving_keeps_the_last_good_checkpoint(
    small_graph: InteractionGraph, uninterrupted: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file = safetensors.torch.save_file
    saves = 0

    def torn_fourth_save(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str]) -> None:
        nonlocal saves
        saves += 1
        if saves == 4:
            Path(filename).write_bytes(b"half a checkpoint")
            raise Crash(filename)
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", torn_fourth_save)
    with pytest.raises(Crash):
        run(small_graph, SMALL_TRAIN, tmp_path)
    monkeypatch.undo()
    last = tmp_path / "last.safetensors"
    assert last.with_name("last.safetensors.partial").read_bytes() == b"half a checkpoint"
    assert checkpointed_epochs(last) == 3

    resumed = run(small_graph, SMALL_TRAIN, tmp_path)

    assert resumed.resumed_from == 3
    assert_same_run(resumed, uninterrupted)


def test_finished_run_restarted_trains_no_further(
    small_graph: InteractionGraph, uninterrupted: Run, tmp_path: Path
) -> None:
    """Early stopping ended the run before `epochs`; running it again must not train on."""
    run(small_graph, SMALL_TRAIN, tmp_path)

    again = run(small_graph, SMALL_TRAIN, tmp_path)

    assert again.epochs_run == [] and again.batch_rows == []
    assert again.resumed_from == len(uninterrupted.history)
    assert_same_run(again, uninterrupted)
