"""Profile fidelity on MovieLens-100K: per facet, how much of what the profiles say is true of their
user (`grec_dagster/llm/fidelity.py`: grounding, debris, category agreement, segments, summaries),
for the `llm` resource's default model and, side by side, a larger local model or saved runs.

    python benchmarks/bench_profile_fidelity.py [--users 943] [--events 10]
        [--model /models/Qwen2.5-1.5B-Instruct [--device cuda] [--batch-size 128]]
        [--profiles run.jsonl ...] [--save DIR] [--skip-default]

Each user's history is their 50 most recent ratings (as `user_histories` holds them, without the
train/test split), with their age, gender and occupation; prompts show the `--events` most recent.
The crowd segments are fitted on all users first, as `user_profiles` does. `--model` takes any
local causal-LM folder (Llama, Qwen2 and their kin) and runs it with the same prompt and the same
per-user grammars. A run saved with `--save` (one JSON line per user after a header line naming
the model, prompt and its instructions) can be compared again later with `--profiles`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from grec_dagster.data.movielens import fetch_movielens_100k, load_movielens_100k  # noqa: E402
from grec_dagster.layout import HomeLayout  # noqa: E402
from grec_dagster.llm.backends import TransformersBackend  # noqa: E402
from grec_dagster.llm.fidelity import FidelityReport, fidelity_warnings, profile_fidelity  # noqa: E402
from grec_dagster.llm.profile_schema import DEFAULT_MAX_EVENTS, UserHistory, UserProfile  # noqa: E402
from grec_dagster.llm.profiles import generate_profiles  # noqa: E402
from grec_dagster.llm.prompting import load_prompt  # noqa: E402
from grec_dagster.llm.texts import histories_from_frames  # noqa: E402
from grec_dagster.llm.vocabulary import Catalog, catalog_for  # noqa: E402
from grec_dagster.resources import LlmResource  # noqa: E402

HISTORY_EVENTS = 50
"""Events per user the pipeline holds (`user_histories`' default); segments are placed by all of them."""


@dataclass(frozen=True)
class Run:
    label: str
    model: str
    prompt_version: str
    instructions: str
    profiles: dict[str, UserProfile]
    statuses: dict[str, int]
    users_per_second: float | None

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.label.replace('/', '_')}.jsonl"
        header = {key: getattr(self, key) for key in ("label", "model", "prompt_version", "instructions", "statuses")}
        lines = [json.dumps({**header, "users_per_second": self.users_per_second})]
        lines += [json.dumps({"user_id": user, "profile": p.model_dump()}) for user, p in self.profiles.items()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> Run:
        header, *rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        profiles = {row["user_id"]: UserProfile.model_validate(row["profile"]) for row in rows}
        return cls(**{**header, "label": f"{header['label']} (saved)"}, profiles=profiles)


def generated_run(
    label: str, backend: TransformersBackend, histories: list[UserHistory], catalog: Catalog, events: int
) -> Run:
    prompt = load_prompt()
    generate_profiles(histories[:1], catalog, backend, prompt, events)  # warms the kernels
    start = time.perf_counter()
    results = generate_profiles(histories, catalog, backend, prompt, events)
    seconds = time.perf_counter() - start
    return Run(
        label=label,
        model=backend.model_id,
        prompt_version=prompt.version,
        instructions=prompt.instructions(),
        profiles={result.user_id: result.profile for result in results},
        statuses=dict(Counter(result.status.value for result in results)),
        users_per_second=round(len(results) / seconds, 3),
    )


def table(runs: list[Run], reports: list[FidelityReport]) -> pd.DataFrame:
    rows = {
        run.label: {**report.metrics(), "users_per_second": run.users_per_second, "statuses": run.statuses}
        for run, report in zip(runs, reports, strict=True)
    }
    return pd.DataFrame(rows)


def print_samples(runs: list[Run], reports: list[FidelityReport]) -> None:
    """The same seeded users under every run, facts first."""
    for index, sample in enumerate(reports[0].samples):
        print(f"\nuser {sample['user_id']}: {sample['attributes']}; top categories {sample['top_categories']}")
        print(f"  recent titles: {sample['recent_titles']}")
        for run, report in zip(runs, reports, strict=True):
            chosen = report.samples[index]
            facets = {key: chosen[key] for key in ("categories", "brands", "crowd_segment", "interests", "summary")}
            print(f"  {run.label}: {json.dumps(facets, ensure_ascii=False)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--events", type=int, default=DEFAULT_MAX_EVENTS)
    parser.add_argument("--model", help="a local model folder to run beside the default model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=LlmResource().batch_size)
    parser.add_argument("--profiles", type=Path, action="append", default=[], help="a saved run to compare")
    parser.add_argument("--save", type=Path, help="a folder to save every generated run in")
    parser.add_argument("--skip-default", action="store_true", help="do not run the default model")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")

    frames = load_movielens_100k(fetch_movielens_100k(HomeLayout.current().data_cache))
    histories = histories_from_frames(frames, HISTORY_EVENTS)
    catalog = catalog_for(frames.items, histories)
    profiled = histories[: args.users]
    print(
        f"MovieLens-100K: {len(profiled)} of {len(histories)} users, {len(catalog.keywords.vocabulary)} catalog "
        f"keywords, {len(catalog.segments.vocabulary)} crowd segments: {catalog.segments.vocabulary}"
    )

    runs = [Run.load(path) for path in args.profiles]
    settings = [] if args.skip_default else [("default", LlmResource(batch_size=args.batch_size))]
    if args.model:
        settings.append(
            (Path(args.model).name, LlmResource(model=args.model, device=args.device, batch_size=args.batch_size))
        )
    for label, resource in settings:
        started = time.perf_counter()
        backend = TransformersBackend.load(resource.backend_config())
        print(f"{label}: {backend.model_id} loaded in {time.perf_counter() - started:.1f} s")
        runs.append(generated_run(label, backend, profiled, catalog, args.events))
        if args.save:
            print(f"  saved to {runs[-1].save(args.save)}")

    reports = [profile_fidelity(run.profiles, profiled, catalog, run.instructions, args.events) for run in runs]
    print(f"\nprofile fidelity, {args.events} most recent events per prompt:\n")
    print(table(runs, reports).to_markdown())
    for run, report in zip(runs, reports, strict=True):
        print(
            f"\n{run.label} ({run.model}, {run.prompt_version}): "
            + ("; ".join(fidelity_warnings(report)) or "meets every threshold")
        )
    print_samples(runs, reports)


if __name__ == "__main__":
    main()
