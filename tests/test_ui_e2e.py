"""End to end: `grec ui` over a materialized GREC_HOME. The Dagster UI is read through its GraphQL
API and rendered in headless Chromium (asserting on what the page shows after its JavaScript
ran), the MLflow UI through its REST API; then Ctrl-C must stop every process `grec ui` started."""

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STARTUP_SECONDS = 300.0
REPOSITORY = {"repositoryLocationName": "grec", "repositoryName": "__repository__"}
STAGES = {
    "ingestion": {"raw_interactions", "items", "users"},
    "features": {"interaction_graph", "user_histories", "temporal_graph"},
    "llm": {"user_profiles", "item_text_embeddings", "profile_embeddings"},
    "training": {
        "popularity_baselines",
        "lightgcn_checkpoint",
        "graphsage_checkpoint",
        "temporal_checkpoint",
        "temporal_profiles_checkpoint",
        "text_tower_checkpoint",
    },
    "fusion": {"fusion_checkpoint", "recommendations"},
    "evaluation": {"evaluation_report", "mlflow_comparison"},
}


@dataclass
class RunningUI:
    process: subprocess.Popen
    dagster: str
    mlflow: str
    marker: str
    """An environment variable value every process `grec ui` started inherits."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


@pytest.fixture
def ui(materialized) -> Iterator[RunningUI]:
    marker = uuid.uuid4().hex
    ports = [str(free_port()), str(free_port())]
    command = [sys.executable, "-m", "grec_dagster.cli", "ui", "--dagster-port", ports[0], "--mlflow-port", ports[1]]
    env = os.environ | materialized.env | {"GREC_UI_TEST": marker}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    urls, deadline = {}, time.monotonic() + STARTUP_SECONDS
    try:
        while len(urls) < 2:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            if match := re.match(r"(Dagster|MLflow) UI: (http://\S+)$", line):
                urls[match[1]] = match[2]
        yield RunningUI(process, urls["Dagster"], urls["MLflow"], marker)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)


def post_json(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def graphql(ui: RunningUI, query: str, **variables) -> dict:
    answer = post_json(f"{ui.dagster}/graphql", {"query": query, "variables": variables})
    assert "errors" not in answer, answer
    return answer["data"]


def render(url: str, screenshot: Path, height: int = 1000) -> str:
    """The page's visible text once its JavaScript has run, and a screenshot of it (the asset graph
    renders only the nodes in view, so a tall group needs a tall window)."""
    profile = screenshot.with_suffix(".profile")
    profile.mkdir()
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size=1600,{height}",
            "--virtual-time-budget=30000",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert screenshot.stat().st_size > 10_000  # a rendered page, not a blank one
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", done.stdout, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())


def processes_with(marker: str) -> list[int]:
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"GREC_UI_TEST={marker}".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


ASSETS_QUERY = """
{ assetNodes {
    assetKey { path } groupName pools
    assetMaterializations(limit: 1) { runId metadataEntries { label __typename ... on MarkdownMetadataEntry { mdStr } } }
    assetChecksOrError { ... on AssetChecks { checks { name blocking executionForLatestMaterialization { status } } } }
} }"""
AUTOMATION_QUERY = """
query ($repo: RepositorySelector!) { repositoryOrError(repositorySelector: $repo) { ... on Repository {
    schedules { name cronSchedule executionTimezone scheduleState { status } }
    sensors { name sensorState { status ticks(limit: 5) { status skipReason } } }
} } }"""


def test_the_dagster_and_mlflow_uis_show_the_materialized_project(ui: RunningUI, materialized, tmp_path: Path):
    nodes = {node["assetKey"]["path"][-1]: node for node in graphql(ui, ASSETS_QUERY)["assetNodes"]}
    for stage, assets in STAGES.items():
        assert {name for name, node in nodes.items() if node["groupName"] == stage} >= assets
    for name in set().union(*STAGES.values()):
        [latest] = nodes[name]["assetMaterializations"]
        assert latest["runId"] == materialized.run_id
    evaluation_metadata = {
        e["label"]: e["__typename"] for e in nodes["evaluation_report"]["assetMaterializations"][0]["metadataEntries"]
    }
    assert evaluation_metadata["results"] == "MarkdownMetadataEntry"
    [results] = [e for e in nodes["evaluation_report"]["assetMaterializations"][0]["metadataEntries"] if e["label"] == "results"]
    for model in ("lightgcn", "text_tower", "static_fusion", "gated_fusion"):
        assert re.search(rf"\| {model} +\| +[0-9.]+", results["mdStr"]), results["mdStr"]
    assert all(nodes[name]["pools"] == ["gpu"] for name in STAGES["training"] - {"popularity_baselines"})
    checks = {c["name"]: c for name in STAGES["ingestion"] for c in nodes[name]["assetChecksOrError"]["checks"]}
    assert {name: (c["blocking"], c["executionForLatestMaterialization"]["status"]) for name, c in checks.items()} == {
        "raw_interactions_quality": (True, "SUCCEEDED"),
        "items_quality": (True, "SUCCEEDED"),
        "users_quality": (True, "SUCCEEDED"),
    }

    lineage = render(f"{ui.dagster}/asset-groups", tmp_path / "lineage.png")
    # Six groups collapse to one box per stage (names only; counts show on zoom): the lineage, by stage.
    assert all(re.search(rf"\b{stage}\b", lineage) for stage in STAGES), lineage
    training = render(f"{ui.dagster}/locations/grec/asset-groups/training", tmp_path / "training.png", height=2600)
    for name in STAGES["training"]:
        assert name in training
    assert training.count("Materialized") >= len(STAGES["training"])
    assert "Join the Dagster community" not in training  # `grec init` turned the sign-up pop-up off
    report = render(f"{ui.dagster}/assets/evaluation_report", tmp_path / "evaluation_report.png")
    assert re.search(r"results .*Show Markdown.* per_segment .*Show Markdown", report)  # long tables fold; mdStr above
    assert "retrain_on_new_data" in report and "At 02:00 AM UTC" in report

    experiment = urllib.parse.quote("grec")
    with urllib.request.urlopen(
        f"{ui.mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}"
    ) as got:
        experiment_id = json.load(got)["experiment"]["experiment_id"]
    runs = post_json(f"{ui.mlflow}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
    metrics = {run["info"]["run_name"]: {m["key"] for m in run["data"]["metrics"]} for run in runs}
    assert {"lightgcn", "graphsage", "temporal"} <= set(metrics)
    shared = metrics["lightgcn"] & metrics["graphsage"] & metrics["temporal"]
    assert {"test_ndcg_at_20", "test_recall_at_20", "train_loss"} <= shared  # side by side in the compare view

    repo = graphql(ui, AUTOMATION_QUERY, repo=REPOSITORY)["repositoryOrError"]
    [schedule] = repo["schedules"]
    assert (schedule["name"], schedule["cronSchedule"], schedule["executionTimezone"]) == (
        "nightly_retrain",
        "0 2 * * *",
        "UTC",
    )
    assert schedule["scheduleState"]["status"] == "RUNNING"
    deadline = time.monotonic() + 120
    while True:  # the daemon `grec ui` runs evaluates the sensor; its skip reason shows in the UI
        [sensor] = [s for s in graphql(ui, AUTOMATION_QUERY, repo=REPOSITORY)["repositoryOrError"]["sensors"]]
        ticks = sensor["sensorState"]["ticks"]
        if ticks or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert sensor["name"] == "retrain_on_new_data" and sensor["sensorState"]["status"] == "RUNNING"
    assert ticks and ticks[0]["status"] == "SKIPPED" and ticks[0]["skipReason"].startswith("no new data")

    assert processes_with(ui.marker)
    ui.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert ui.process.wait(timeout=120) == 0
    assert processes_with(ui.marker) == []
    assert not answers(ui.dagster) and not answers(ui.mlflow)
