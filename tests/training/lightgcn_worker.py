"""LightGCN on a small synthetic shop, as the resume and DDP tests run it: in-process, as a
plain subprocess (to be killed and restarted), or as each process of `torchrun`.

    python lightgcn_worker.py OUT --interactions N --train '{"epochs": ..}' [--checkpoint-dir DIR]

trains with `train_lightgcn`, and each process writes its final embeddings and the run's
record to OUT/rank<RANK>.safetensors (rank 0 when not under torchrun). Training runs on one
thread: the results are then the same in every process and on every machine, and the tests'
processes do not fight over the shared cores.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from unittest.mock import patch

import torch

from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
from grec_dagster.graph.interactions import InteractionGraph, build_graph
from grec_dagster.graph.splits import split_labels
from grec_dagster.models.lightgcn import LightGCN, LightGCNParams
from grec_dagster.storage import load_tensors, save_tensors
from grec_dagster.training.loop import TrainingContext, TrainParams
from grec_dagster.training.train_lightgcn import train_lightgcn

MODEL = LightGCNParams(dim=16, layers=2)


class Crash(Exception):
    """A stand-in for whatever ends a run early: an exception, a kill, a lost machine."""


@dataclass
class Run:
    """What a test compares between runs. `epochs_run` are the epochs this process trained,
    `batch_rows` the examples of each loss it computed (its shares of the batches)."""

    user_embedding: torch.Tensor
    item_embedding: torch.Tensor
    history: list[dict[str, float]]
    best_epoch: int
    best_metric: float
    resumed_from: int | None
    epochs_run: list[int]
    batch_rows: list[int]

    def same_history(self) -> list[dict[str, float]]:
        """The history without wall-clock seconds, the one thing a repeated run may change."""
        return [{k: v for k, v in record.items() if k != "seconds"} for record in self.history]


def shop_graph(interactions: int) -> InteractionGraph:
    log = generate_synthetic(SyntheticConfig(n_interactions=interactions, seed=0)).interactions
    return build_graph(log, split_labels(log, "random"), "random")


def run(
    graph: InteractionGraph, train: TrainParams, checkpoint_dir: Path | None = None, crash_in_epoch: int | None = None
) -> Run:
    """Train; `crash_in_epoch`: raise `Crash` from that epoch's callback, before its checkpoint."""
    epochs_run: list[int] = []

    def on_epoch(record: dict[str, float]) -> None:
        epochs_run.append(int(record["epoch"]))
        if epochs_run[-1] == crash_in_epoch:
            raise Crash(crash_in_epoch)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with patch.object(LightGCN, "forward", autospec=True, side_effect=LightGCN.forward) as loss:
            trained = train_lightgcn(graph, MODEL, train, TrainingContext(checkpoint_dir, on_epoch))
    finally:
        torch.set_num_threads(threads)
    result = trained.result
    return Run(
        trained.user_embedding,
        trained.item_embedding,
        result.history,
        result.best_epoch,
        result.best_metric,
        result.resumed_from_epoch,
        epochs_run,
        [len(call.args[1]) for call in loss.call_args_list],
    )


def write(path: Path, result: Run) -> None:
    tensors = {"user_embedding": result.user_embedding, "item_embedding": result.item_embedding}
    meta = {field.name: getattr(result, field.name) for field in fields(result) if field.name not in tensors}
    save_tensors(path, tensors, meta)


def read(path: Path) -> Run:
    tensors, meta = load_tensors(path)
    return Run(tensors["user_embedding"], tensors["item_embedding"], **meta)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--interactions", type=int, required=True)
    parser.add_argument("--train", type=TrainParams.model_validate_json, required=True)
    parser.add_argument("--checkpoint-dir", type=Path)
    args = parser.parse_args()
    result = run(shop_graph(args.interactions), args.train, args.checkpoint_dir)
    write(args.out / f"rank{os.environ.get('RANK', '0')}.safetensors", result)


if __name__ == "__main__":
    main()
