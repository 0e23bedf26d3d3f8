"""The same data and config give the same bits in every process, at the default thread count, for
every model; and a run killed with SIGKILL and started again ends exactly where an uninterrupted
one does, for every model and through the Dagster asset path.

Why this holds (and what these tests would catch): `fit` runs with torch's deterministic kernels,
so gradients accumulate in a fixed order instead of with atomic adds across threads; every random
draw comes from seeded generators whose states the checkpoint carries. Two processes run side by
side here, so they also compete for the cores, as CI's do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from grec_dagster.storage import load_tensors
from grec_dagster.training.determinism import deterministic_kernels

from .determinism_worker import CLOSED_FORM, MODELS, TRAIN

WORKER = Path(__file__).with_name("determinism_worker.py")
KILL_AT_EPOCH = 3


def worker(out: Path, *options: str) -> list[str]:
    return [sys.executable, str(WORKER), str(out), *options]


def outputs(folder: Path, models: tuple[str, ...] = MODELS) -> dict[str, dict]:
    return {name: json.loads((folder / f"{name}.json").read_text()) for name in models}


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the training process ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)


def checkpointed_epochs(path: Path) -> int:
    try:
        return load_tensors(path)[1]["next_epoch"]
    except (FileNotFoundError, OSError, RuntimeError, json.JSONDecodeError, KeyError):
        return 0  # not written yet, or being replaced right now


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every model trained in two processes started together, at the default thread count."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    environment = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    runs = [subprocess.Popen(worker(folder), env=environment) for folder in (first, second)]
    assert [run.wait(timeout=900) for run in runs] == [0, 0]
    return outputs(first), outputs(second)


@pytest.mark.parametrize("model", MODELS)
def test_two_processes_give_the_same_checkpoint_history_and_metrics(two_processes, model: str) -> None:
    first, second = two_processes
    assert first[model]["tensors"] == second[model]["tensors"]
    assert first[model]["history"] == second[model]["history"]
    assert first[model]["test"] == second[model]["test"]
    if model not in CLOSED_FORM:  # the config ran to its end: no early stop hid a difference
        assert len(first[model]["history"]) == TRAIN.epochs


@pytest.mark.parametrize("model", [model for model in MODELS if model not in CLOSED_FORM])
def test_killed_run_resumes_to_the_uninterrupted_result(two_processes, model: str, tmp_path: Path) -> None:
    uninterrupted = two_processes[0][model]
    command = worker(tmp_path / "out", "--models", model, "--checkpoint-root", str(tmp_path / "state"))
    last = tmp_path / "state" / model / "last.safetensors"
    killed = subprocess.Popen(command)
    try:
        wait_until(lambda: checkpointed_epochs(last) >= KILL_AT_EPOCH, killed)
    finally:
        killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL

    assert subprocess.run(command, timeout=600).returncode == 0
    assert outputs(tmp_path / "out", (model,))[model] == uninterrupted


SHOP = {"source": {"kind": "synthetic", "synthetic_interactions": 3000, "synthetic_days": 30}}
LIGHTGCN_RUN = {
    "ops": {"lightgcn_checkpoint": {"config": {"epochs": 10, "patience": 10, "batch_size": 128, "dim": 16}}},
    "execution": {"config": {"in_process": {}}},  # one process: what is killed is the one training
}
SELECTION = "raw_interactions,items,users,interaction_graph,lightgcn_checkpoint"


def materialize(home: Path) -> subprocess.Popen:
    """`dagster asset materialize` of the LightGCN checkpoint and what it reads, in GREC_HOME `home`."""
    home.mkdir(exist_ok=True)
    (home / "grec.yaml").write_text(yaml.safe_dump(SHOP))
    (home / "run.yaml").write_text(yaml.safe_dump(LIGHTGCN_RUN))
    environment = os.environ | {
        "GREC_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "GREC_CONFIG": str(home / "grec.yaml"),
    }
    (home / "dagster").mkdir(exist_ok=True)
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "asset", "materialize", "-m", "grec_dagster.definitions"]
    return subprocess.Popen(
        [*command, "--select", SELECTION, "-c", str(home / "run.yaml")],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def checkpoint(home: Path) -> dict[str, torch.Tensor]:
    return load_tensors(home / "checkpoints" / "lightgcn" / "model.safetensors")[0]


def test_asset_killed_mid_training_resumes_to_the_uninterrupted_checkpoint(tmp_path: Path) -> None:
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    reference = materialize(uninterrupted)
    killed = materialize(resumed)
    try:
        wait_until(
            lambda: any(
                checkpointed_epochs(path) >= KILL_AT_EPOCH
                for path in resumed.glob("checkpoints/lightgcn/state-*/last.safetensors")
            ),
            killed,
        )
    finally:
        killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert not (resumed / "checkpoints" / "lightgcn" / "model.safetensors").exists()

    again = materialize(resumed)
    assert again.wait(timeout=600) == 0, again.stderr.read()[-3000:]
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]
    first, second = checkpoint(uninterrupted), checkpoint(resumed)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not list(resumed.glob("checkpoints/lightgcn/state-*")), "the finished run removes its resumable state"


def test_deterministic_kernels_skip_the_nan_fill_only_inside_the_block() -> None:
    """The NaN fill of new tensors is off while training (it changes no result) and restored after."""
    before = torch.utils.deterministic.fill_uninitialized_memory
    with deterministic_kernels():
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert torch.utils.deterministic.fill_uninitialized_memory is before
