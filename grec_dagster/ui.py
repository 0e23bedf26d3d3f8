"""`grec ui`: the Dagster UI and the MLflow UI on 127.0.0.1, started together and stopped together.

The Dagster side is `dagster dev`, so its daemon runs too and the nightly schedule and the
sensors tick while the UI is open. Each server runs in its own session, with its log in a file,
so stopping `grec ui` (Ctrl-C or SIGTERM) stops every process it started, children included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
STOP_SECONDS = 30.0
WORKSPACE = """\
# Written by `grec ui`: grec's definitions as the code location `grec`, as in the repository's workspace.yaml.
load_from:
  - python_module:
      module_name: grec_dagster.definitions
      location_name: grec
"""


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    url: str
    health_path: str
    """Answers 200 once the server is up."""


def ui_services(dagster_port: int, mlflow_port: int, tracking_uri: str, dagster_home: Path) -> list[Service]:
    """The Dagster UI over grec's definitions, and an MLflow UI over a local store (a remote
    tracking server already has its own UI, so none is started for it)."""
    workspace = dagster_home / "workspace.yaml"
    workspace.write_text(WORKSPACE)
    python = [sys.executable, "-m"]
    services = [
        Service(
            "Dagster UI",
            [*python, "dagster", "dev", "-w", str(workspace), "-h", HOST, "-p", str(dagster_port)],
            f"http://{HOST}:{dagster_port}",
            "/server_info",
        )
    ]
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        command = [*python, "mlflow", "server", "--backend-store-uri", tracking_uri, "--host", HOST]
        services.append(
            Service("MLflow UI", [*command, "--port", str(mlflow_port)], f"http://{HOST}:{mlflow_port}", "/health")
        )
    return services


def serve(services: list[Service], env: dict[str, str], logs: Path, timeout: float) -> int:
    """Start `services`, print their URLs once they answer, and run until interrupted or one exits."""
    logs.mkdir(parents=True, exist_ok=True)
    # Set explicitly: a process started in the background by a shell inherits SIGINT ignored, and
    # Python then installs no Ctrl-C handler of its own.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    running: list[tuple[Service, subprocess.Popen]] = []
    try:
        for service in services:
            log = logs / f"{service.name.split()[0].lower()}.log"
            with log.open("ab") as sink:
                process = subprocess.Popen(
                    service.command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
                )
            running.append((service, process))
            print(f"starting {service.name} (log: {log})", flush=True)
        failed = _wait_until_up(running, time.monotonic() + timeout)
        if failed:
            print(failed, file=sys.stderr)
            return 1
        for service, _ in running:
            print(f"{service.name}: {service.url}", flush=True)
        print("Ctrl-C stops both.", flush=True)
        while True:
            for service, process in running:
                if process.poll() is not None:
                    print(f"{service.name} exited with code {process.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop([process for _, process in running])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait_until_up(running: list[tuple[Service, subprocess.Popen]], deadline: float) -> str | None:
    """None once every service answers; otherwise why one never did."""
    pending = list(running)
    while pending:
        for service, process in list(pending):
            if process.poll() is not None:
                return f"{service.name} exited with code {process.returncode} before answering"
            if _answers(service.url + service.health_path):
                pending.remove((service, process))
        if time.monotonic() > deadline:
            return f"{', '.join(s.name for s, _ in pending)} did not answer in time"
        time.sleep(0.5)
    return None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(processes: list[subprocess.Popen]) -> None:
    """Interrupt each service's whole process group, as Ctrl-C would, then kill what is left."""
    for process in processes:
        _signal_group(process, signal.SIGINT)
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process, signal.SIGKILL)  # stragglers in the group (workers, code servers)
        process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
