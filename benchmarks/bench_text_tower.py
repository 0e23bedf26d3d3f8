"""The text tower's two encoders side by side on MovieLens-100K: frozen MiniLM vectors vs MiniLM
with LoRA adapters trained alongside the heads (`encoder: lora`).

Prints, for the same epochs, split and seed: seconds per epoch of training steps, wall and CPU
time of the whole training call (validation and final embeddings included), and validation
NDCG@20 after the last epoch -- what the LoRA option costs on this machine, not a quality verdict
(a few epochs are far from convergence).

    python benchmarks/bench_text_tower.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_lightgcn import movielens_graph  # noqa: E402

from grec_dagster.data.movielens import fetch_movielens_100k, load_movielens_100k  # noqa: E402
from grec_dagster.layout import HomeLayout  # noqa: E402
from grec_dagster.llm.text_encoder import TextEncoder  # noqa: E402
from grec_dagster.llm.texts import item_texts  # noqa: E402
from grec_dagster.models.text_tower import TextTowerParams  # noqa: E402
from grec_dagster.training.loop import TrainParams  # noqa: E402
from grec_dagster.training.train_text_tower import train_text_tower  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")

    graph = movielens_graph()
    items = load_movielens_100k(fetch_movielens_100k(HomeLayout.current().data_cache)).items
    texts = item_texts(items, graph.item_ids)
    item_text = TextEncoder().encode(texts)
    train = TrainParams(epochs=args.epochs, patience=args.epochs)
    print(f"MovieLens-100K random split: {graph.n_users} users, {graph.n_items} items; {args.epochs} epoch(s)")

    seconds = {}
    for encoder in ("frozen", "lora"):
        wall, cpu = time.perf_counter(), time.process_time()
        trained = train_text_tower(graph, item_text, None, TextTowerParams(encoder=encoder), train, texts=texts)
        history = trained.result.history
        seconds[encoder] = sum(epoch["seconds"] for epoch in history) / len(history)
        print(
            f"  {encoder:<6} {seconds[encoder]:8.1f} s/epoch of training steps   whole call "
            f"{time.perf_counter() - wall:7.1f} s wall, {time.process_time() - cpu:7.1f} s CPU   "
            f"valid NDCG@20 {history[-1]['ndcg@20']:.4f}"
        )
    print(f"  lora / frozen: {seconds['lora'] / seconds['frozen']:.0f}x the time per epoch")


if __name__ == "__main__":
    main()
