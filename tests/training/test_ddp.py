"""Two DDP processes on CPU (gloo, under torchrun) train as one process does on the same batch size.

Each process takes its share of every batch and weights its mean loss by that share; DDP
averages the gradients, so every step follows the gradient of the whole batch's mean loss,
as a single process's step does. The runs differ only in the order of float sums (two
half-batch sums and an all-reduce against one sum over the batch), about an ulp per step,
which AdamW carries along: after 15 epochs the embeddings (entries of size ~1) agree to ~1e-6.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grec_dagster.graph.interactions import TRAIN
from grec_dagster.training.loop import TrainParams

from .lightgcn_worker import read, run, shop_graph

WORKER = Path(__file__).with_name("lightgcn_worker.py")
INTERACTIONS = 6_000


def test_two_processes_train_as_one_on_the_same_batch_size(tmp_path: Path) -> None:
    graph = shop_graph(INTERACTIONS)
    pairs = len(graph.pairs(TRAIN))
    # Odd, so every batch splits unevenly and only the weights make the halves add up, and
    # leaving a last batch of one row: one process gets none of it but must still step.
    batch_size = next(size for size in range(49, 512, 2) if pairs % size == 1)
    train = TrainParams(epochs=15, lr=0.01, batch_size=batch_size, patience=5)
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
        *(str(WORKER), str(tmp_path), "--interactions", str(INTERACTIONS), "--train", train.model_dump_json()),
    ]
    ddp = subprocess.Popen(command, env=os.environ | {"OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        single = run(graph, train)  # here, while the two processes train
        assert ddp.wait(timeout=300) == 0
    finally:
        if ddp.poll() is None:  # a failed test must not leave workers waiting on each other
            with contextlib.suppress(ProcessLookupError):
                os.killpg(ddp.pid, signal.SIGKILL)
    first, second = (read(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1))

    assert first.batch_rows == [max(rows // 2, 1) for rows in single.batch_rows]  # every step, a share each
    assert second.batch_rows == [rows - rows // 2 for rows in single.batch_rows]
    assert torch.equal(first.user_embedding, second.user_embedding)  # DDP keeps the replicas equal
    assert first.same_history() == second.same_history()

    assert (first.best_epoch, len(first.history)) == (single.best_epoch, len(single.history))
    assert first.best_metric == pytest.approx(single.best_metric, abs=1e-4)
    for multi, one in zip(first.history, single.history, strict=True):
        assert multi["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        assert multi["ndcg@20"] == pytest.approx(one["ndcg@20"], abs=1e-4)
    torch.testing.assert_close(first.user_embedding, single.user_embedding, rtol=0, atol=1e-5)
    torch.testing.assert_close(first.item_embedding, single.item_embedding, rtol=0, atol=1e-5)
