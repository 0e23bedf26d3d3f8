"""Training in several processes from one call: `launch` runs a training function in N processes
under `torchrun` and hands back what rank 0 trained.

`fit` already trains as one DDP process among many when it runs under `torchrun` (see `loop.py`);
what was missing is a way to start those processes from a step or a script. The function travels
as a pickle (a module-level function with its arguments, e.g. `functools.partial(train_lightgcn,
graph, model, train)`; a lambda does not pickle) in a private folder the launcher makes and no one
else writes, so no process ever unpickles a file it did not get from its own launcher. Each
process calls it with the caller's `checkpoint_dir` (a killed launch resumes from the state
rank 0 saved) and an accelerator of its own: on the CPU that is gloo, on GPUs NCCL with process r
on visible GPU r. Rank 0's epoch records are relayed to the caller's `on_epoch` while the
processes train (an MLflow run sees its curves live), and rank 0 writes the trained embeddings
with `save_embeddings` for the launcher to load: DDP keeps the replicas equal, so rank 0's result
is every rank's.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from torch.distributed.elastic.multiprocessing.errors import record

from grec_dagster.storage import load_tensors, save_tensors
from grec_dagster.training.embeddings import TrainedEmbeddings, save_embeddings
from grec_dagster.training.loop import DEFAULT_CONTEXT, EpochCallback, TrainingContext, TrainResult

TrainFn = Callable[[TrainingContext], TrainedEmbeddings]
Device = Literal["cpu", "cuda"]

TRAIN_FILE = "train.pickle"
JOB_FILE = "job.json"
EPOCHS_FILE = "epochs.jsonl"
RESULT_FILE = "result.safetensors"
BEST_STATE_FILE = "best_state.safetensors"
POLL_SECONDS = 0.5


def launch(
    train: TrainFn, processes: int, context: TrainingContext = DEFAULT_CONTEXT, device: Device = "cpu"
) -> TrainedEmbeddings:
    """`train(context)` in `processes` DDP processes on `device`; rank 0's result.

    `context.accelerator` must be None: each process builds its own. On the CPU each process gets
    an equal share of this process's cores as torch threads unless OMP_NUM_THREADS says otherwise.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if context.accelerator is not None:
        raise ValueError("launch builds each process's accelerator; pass `device` instead of an accelerator")
    if device == "cuda" and processes > torch.cuda.device_count():
        raise ValueError(
            f"{processes} processes on cuda need {processes} visible GPUs; {torch.cuda.device_count()} visible"
        )
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    with tempfile.TemporaryDirectory(prefix="grec-launch-") as folder:  # mode 0700: only we read it
        job = Path(folder)
        (job / TRAIN_FILE).write_bytes(pickle.dumps(train))
        checkpoint_dir = None if context.checkpoint_dir is None else str(context.checkpoint_dir)
        (job / JOB_FILE).write_text(json.dumps({"device": device, "checkpoint_dir": checkpoint_dir}))
        command = [*torchrun_command(processes), "-m", __name__, str(job)]
        env = {"OMP_NUM_THREADS": str(threads)} | dict(os.environ)
        workers = subprocess.Popen(command, env=env, start_new_session=True)
        try:
            _relay_epochs(workers, job / EPOCHS_FILE, context.on_epoch)
        finally:
            if workers.poll() is None:  # the caller failed (or was interrupted): take the workers down too
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(workers.pid, signal.SIGKILL)
                workers.wait()
        if workers.returncode != 0:
            raise RuntimeError(
                f"{processes} training process(es) under torchrun failed (exit {workers.returncode}); "
                "torchrun printed the failing rank's traceback above"
            )
        return _load_result(job)


def torchrun_command(processes: int) -> list[str]:
    """The start of a command that runs a Python module or script in `processes` processes on this
    machine under torchrun (append `-m module` or a script path, and their arguments)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]


def _relay_epochs(workers: subprocess.Popen, path: Path, on_epoch: EpochCallback | None) -> None:
    """Until the workers exit, hand each complete epoch record rank 0 appended to `on_epoch`."""
    offset = 0
    while True:
        finished = workers.poll() is not None  # read after the last write once they are done
        if on_epoch is not None and path.exists():
            with path.open("rb") as records:
                records.seek(offset)
                lines = records.read().split(b"\n")[:-1]  # the last piece is empty or still being written
            for line in lines:
                on_epoch(json.loads(line))
                offset += len(line) + 1
        if finished:
            return
        time.sleep(POLL_SECONDS)


def _save_result(job: Path, trained: TrainedEmbeddings) -> None:
    result = trained.result
    run = {
        "history": result.history,
        "best_metric": result.best_metric,
        "resumed_from_epoch": result.resumed_from_epoch,
        "extra": result.extra,
    }
    save_tensors(job / BEST_STATE_FILE, result.best_state, {})
    save_embeddings(job / RESULT_FILE, trained, run)


def _load_result(job: Path) -> TrainedEmbeddings:
    tensors, meta = load_tensors(job / RESULT_FILE)
    best_state, _ = load_tensors(job / BEST_STATE_FILE)
    result = TrainResult(
        history=meta["history"],
        best_epoch=meta["best_epoch"],
        best_metric=meta["best_metric"],
        best_state=best_state,
        resumed_from_epoch=meta["resumed_from_epoch"],
        extra=meta["extra"],
    )
    weights = {name.removeprefix("weights."): t for name, t in tensors.items() if name.startswith("weights.")}
    return TrainedEmbeddings(
        tensors["user_embedding"],
        tensors["item_embedding"],
        result,
        tensors.get("valid_user_embedding"),
        tensors.get("valid_item_embedding"),
        weights,
    )


@record  # torchrun then reports the failing rank's traceback
def _work(job: Path) -> None:
    """One process of a launch: train, and on rank 0 record each epoch and the result."""
    train: TrainFn = pickle.loads((job / TRAIN_FILE).read_bytes())
    spec = json.loads((job / JOB_FILE).read_text())
    accelerator = Accelerator(cpu=spec["device"] == "cpu")
    epochs = job / EPOCHS_FILE

    def on_epoch(epoch: dict[str, float]) -> None:  # `fit` calls it on the main process only
        with epochs.open("a") as records:
            records.write(json.dumps(epoch) + "\n")

    checkpoint_dir = None if spec["checkpoint_dir"] is None else Path(spec["checkpoint_dir"])
    trained = train(TrainingContext(checkpoint_dir, on_epoch, accelerator))
    if accelerator.is_main_process:
        _save_result(job, trained)


if __name__ == "__main__":
    _work(Path(sys.argv[1]))
