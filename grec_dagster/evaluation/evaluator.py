"""The one evaluator every model goes through: same task, same exclusions, same segments."""

from __future__ import annotations

import pandas as pd
import torch

from grec_dagster.evaluation.metrics import RankingTask, ScoreFn, rank_users
from grec_dagster.evaluation.segments import item_segments, user_segments
from grec_dagster.graph.interactions import SPLIT_NAMES, TEST, InteractionGraph, known_before

KS = (10, 20)


def ranking_task(graph: InteractionGraph, split: int) -> RankingTask:
    """Rank for `split`'s users; exclude what they had before it (train, plus valid when testing)."""
    return RankingTask.from_pairs(graph.pairs(split), graph.pairs(*known_before(split)), graph.n_items)


def evaluate(
    score_fn: ScoreFn,
    graph: InteractionGraph,
    model: str,
    split: int = TEST,
    task: RankingTask | None = None,
    ks: tuple[int, ...] = KS,
) -> pd.DataFrame:
    """Long table: model, split, segment, metric, k, value, users (averaged over users with relevant items)."""
    task = task or ranking_task(graph, split)
    per_user = rank_users(score_fn, task, ks, item_segments(graph))
    users_in = {"all": torch.ones(len(task.users), dtype=torch.bool)}
    users_in |= {name: mask[task.users] for name, mask in user_segments(graph).items()}
    rows = []
    for (item_segment, metric, k), values in per_user.items():
        for user_segment, members in users_in.items():
            if item_segment != "all" and user_segment != "all":
                continue
            chosen = values[members]
            chosen = chosen[~torch.isnan(chosen)]
            rows.append(
                {
                    "model": model,
                    "split": SPLIT_NAMES[split],
                    "segment": item_segment if item_segment != "all" else user_segment,
                    "metric": metric,
                    "k": k,
                    "value": float(chosen.mean()) if len(chosen) else float("nan"),
                    "users": int(len(chosen)),
                }
            )
    return pd.DataFrame(rows)


def validation_ndcg(
    score_fn: ScoreFn, task: RankingTask, segments: dict[str, torch.Tensor] | None = None, k: int = 20
) -> dict[str, float]:
    """Mean NDCG@k over validation users as `ndcg@k` (the early-stopping signal), and as
    `ndcg@k/<segment>` for each item segment with relevant items (what the grokking check
    watches per segment), from one ranking pass."""
    per_user = rank_users(score_fn, task, (k,), segments)
    found = {}
    for segment in ("all", *(segments or {})):
        values = per_user[(segment, "ndcg", k)]
        values = values[~torch.isnan(values)]
        if values.numel():
            found[f"ndcg@{k}" if segment == "all" else f"ndcg@{k}/{segment}"] = float(values.mean())
    return found
