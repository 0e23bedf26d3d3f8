"""grec on a Postgres-backed Dagster instance (configs/postgres/dagster.yaml, against a server this
test starts): two runs launched at once, each under the multiprocess executor, share one `gpu`
pool through Postgres, so their training steps never overlap.

The runs are the README's command, `dagster asset materialize`, as two processes. Before they
start, the test itself holds the pool's one slot, and lets go only once both runs have a training
step waiting for it: each run then saw the pool full, and which of them trains first is the only
thing left to chance. The server needs Debian's `postgresql` (`make test` installs it)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml
from conftest import QUICK_TRAINING, SMALL_SHOP
from test_multiprocess import overlap, step_spans

from grec_dagster.cli import main as grec
from grec_dagster.definitions import build_definitions
from grec_dagster.resources import GPU_POOL

ROOT = Path(__file__).resolve().parents[1]
INSTANCE = ROOT / "configs" / "postgres" / "dagster.yaml"
RUNS = ("lightgcn_checkpoint", "graphsage_checkpoint")
"""One training asset per run: two runs, one pool."""
UPSTREAM = ["raw_interactions", "items", "users", "interaction_graph"]
BLOCKED = f"Step blocked by limit for pool {GPU_POOL}"
SERVER_USER = "postgres"
"""initdb refuses to run as root; Debian's `postgresql` package creates this user."""
DEADLINE_SECONDS = 300
"""Generous: on 2 cores shared with other jobs each run took over a minute just to import grec."""


@dataclass(frozen=True)
class Server:
    port: int
    user: str
    password: str

    def env(self, db_name: str) -> dict[str, str]:
        """The variables configs/postgres/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": db_name,
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
        }

    def create_database(self, name: str) -> None:
        con = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname="postgres"
        )
        con.autocommit = True
        with con.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        con.close()


def server_binaries() -> Path:
    """The folder of initdb and pg_ctl: on PATH, or where Debian puts them (newest version first)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not installed:
        pytest.fail("no PostgreSQL server (initdb): install Debian's `postgresql` (make test does)")
    return installed[-1].parent


def as_server_user(command: list[str]) -> list[str]:
    """`command` as the non-root user the server must run as, when we are root."""
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.fail(
            f"running as root and there is no {SERVER_USER!r} user for the server (Debian's postgresql makes one)"
        )
    return ["runuser", "-u", SERVER_USER, "--", *command]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Server]:
    """A throw-away Postgres server on a free local port, in a folder of its own under /tmp (pytest's
    folders are private to root, and the server runs as another user)."""
    binaries = server_binaries()
    folder = Path(tempfile.mkdtemp(prefix="grec-postgres-"))
    data, log, secret = folder / "data", folder / "server.log", folder / "password"
    server = Server(port=0, user="grec", password=uuid.uuid4().hex)
    secret.write_text(server.password)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SERVER_USER)
        for path in (folder, secret):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    initdb = [str(binaries / "initdb"), "-D", str(data), "-U", server.user, f"--pwfile={secret}"]
    initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"]
    subprocess.run(as_server_user(initdb), check=True, capture_output=True, text=True)
    pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
    try:
        for _ in range(3):  # a port found free can be taken before the server binds it: try another
            server = Server(free_port(), server.user, server.password)
            # fsync off: this server's data is thrown away with the test, and fsync is most of its writes' time.
            options = f"-p {server.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder} -c fsync=off"
            if subprocess.run(as_server_user([*pg_ctl, "-o", options, "start"]), capture_output=True).returncode == 0:
                break
        else:
            pytest.fail(f"the Postgres server did not start; its log:\n{log.read_text()}")
        yield server
    finally:
        subprocess.run(as_server_user([*pg_ctl, "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def blocked_runs(instance: dg.DagsterInstance) -> set[str]:
    """Runs with a step that found the `gpu` pool full."""
    return {
        run.run_id
        for run in instance.get_runs()
        if any(entry.message == BLOCKED for entry in instance.all_logs(run.run_id))
    }


def test_two_runs_at_once_take_turns_in_the_gpu_pool_on_postgres(postgres: Server, tmp_path: Path, monkeypatch):
    home = tmp_path / "grec"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(INSTANCE, home / "dagster" / "dagster.yaml")
    (home / "grec.yaml").write_text(yaml.safe_dump(SMALL_SHOP))
    postgres.create_database("dagster")
    env = {
        "GREC_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "GREC_CONFIG": str(home / "grec.yaml"),
        "OMP_NUM_THREADS": "1",  # two runs on two cores
        **postgres.env("dagster"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert grec(["init"]) == 0  # keeps our dagster.yaml; creates the MLflow store before two runs race for it

    with dg.DagsterInstance.get() as instance:  # creates the schema, also before the runs race for it
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        defs = build_definitions(SMALL_SHOP)
        assert dg.materialize(defs.assets, selection=UPSTREAM, resources=defs.resources, instance=instance).success

        storage = instance.event_log_storage
        holder = str(uuid.uuid4())
        storage.initialize_concurrency_limit_to_default(GPU_POOL)
        assert storage.claim_concurrency_slot(GPU_POOL, holder, "holder").is_claimed
        launched = [launch_run(asset, tmp_path, env) for asset in RUNS]
        try:
            deadline = time.monotonic() + DEADLINE_SECONDS
            while len(blocked_runs(instance)) < len(RUNS):
                assert all(run.poll() is None for run in launched), "a run ended before it reached the pool"
                assert time.monotonic() < deadline, "the runs did not both reach the gpu pool in time"
                time.sleep(1)
            storage.free_concurrency_slot_for_step(holder, "holder")
            for asset, run in zip(RUNS, launched, strict=True):
                assert run.wait(timeout=DEADLINE_SECONDS) == 0, (tmp_path / f"{asset}.log").read_text()
        finally:
            for run in launched:
                if run.poll() is None:
                    run.kill()

        runs = {asset: run_of(instance, asset) for asset in RUNS}
        spans = {asset: step_spans(instance, runs[asset].run_id)[asset] for asset in RUNS}
        engines = [" ".join(e.message or "" for e in instance.all_logs(runs[asset].run_id)) for asset in RUNS]
        gpu = storage.get_concurrency_info(GPU_POOL)
    assert all(runs[asset].status == dg.DagsterRunStatus.SUCCESS for asset in RUNS)
    assert all("Executing steps using multiprocess executor" in engine for engine in engines)
    assert not overlap(*spans.values())  # one training step at a time, across the two runs
    assert (gpu.limit, gpu.claimed_slots) == (1, [])


def launch_run(asset: str, folder: Path, env: dict[str, str]) -> subprocess.Popen:
    """`dagster asset materialize` of one training asset under the multiprocess executor."""
    run_config = folder / f"{asset}.yaml"
    run_config.write_text(
        yaml.safe_dump({"ops": {asset: QUICK_TRAINING[asset]}, "execution": {"config": {"multiprocess": {}}}})
    )
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize"]
    command += ["-m", "grec_dagster.definitions", "--select", asset, "-c", str(run_config)]
    with (folder / f"{asset}.log").open("w") as log:  # a file: a pipe nobody reads would stall the run
        return subprocess.Popen(command, env=os.environ | env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def run_of(instance: dg.DagsterInstance, asset: str) -> dg.DagsterRun:
    [run] = [run for run in instance.get_runs() if run.asset_selection == {dg.AssetKey(asset)}]
    return run
