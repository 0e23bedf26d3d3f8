"""GPU reservation: steps placed at the same moment on the same readings take different GPUs, in one
process, in two racing processes and through the `gpu` resource of a real Dagster run; a lock is
given back when its step ends or its process dies. The machine has no GPU, so the readings are
made up; the locks are the real ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import pytest

from grec_dagster import resources
from grec_dagster.resources import GpuResource
from grec_dagster.training.devices import DeviceStatus, place, reserve

ROOMY, ROOMIER = DeviceStatus(0, "A10", 24000, 12000, 10.0), DeviceStatus(1, "A10", 24000, 20000, 5.0)
GPUS = [ROOMY, ROOMIER]
RULE = {"min_free_mb": 4096, "max_utilization": 90.0}

RACER = """
import json, sys
from pathlib import Path
from grec_dagster.training.devices import DeviceStatus, reserve
gpus = [DeviceStatus(**reading) for reading in json.loads(sys.argv[2])]
print("ready", flush=True)
sys.stdin.readline()
held = reserve(gpus, 4096, 90.0, False, Path(sys.argv[1]))
print(held.placement.device, flush=True)
sys.stdin.readline()
"""
"""Reserves a GPU from the readings in argv[2] when told to (a line on stdin), prints it, and holds
it until the next line or its death."""


def test_a_reserved_gpu_is_passed_over_and_named():
    assert place(GPUS, **RULE, allow_cpu_fallback=False, reserved={1}).device == "cuda:0"
    nowhere = place(GPUS, **RULE, allow_cpu_fallback=False, reserved={0, 1})
    assert nowhere.device is None
    assert "cuda:1 (A10) 20000/24000 MiB free, 5% busy, reserved by another step" in nowhere.reason
    assert place(GPUS, **RULE, allow_cpu_fallback=True, reserved={0, 1}).device == "cpu"


def test_reservations_at_the_same_moment_get_different_gpus_until_released(tmp_path: Path):
    first = reserve(GPUS, **RULE, allow_cpu_fallback=True, lock_dir=tmp_path)
    second = reserve(GPUS, **RULE, allow_cpu_fallback=True, lock_dir=tmp_path)
    third = reserve(GPUS, **RULE, allow_cpu_fallback=True, lock_dir=tmp_path)
    assert [r.placement.device for r in (first, second, third)] == ["cuda:1", "cuda:0", "cpu"]
    assert third.lock is None and "reserved by another step" in third.placement.reason
    first.release()
    again = reserve(GPUS, **RULE, allow_cpu_fallback=False, lock_dir=tmp_path)
    assert again.placement.device == "cuda:1"
    for held in (second, again):
        held.release()


def start_racer(lock_dir: Path) -> subprocess.Popen:
    racer = subprocess.Popen(
        [sys.executable, "-c", RACER, str(lock_dir), json.dumps([asdict(gpu) for gpu in GPUS])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert racer.stdout.readline().strip() == "ready"
    return racer


def go(racer: subprocess.Popen) -> None:
    racer.stdin.write("go\n")
    racer.stdin.flush()


def test_two_processes_racing_take_different_gpus_and_a_dead_one_frees_its_own(tmp_path: Path):
    racers = [start_racer(tmp_path) for _ in range(2)]
    try:
        for racer in racers:  # both reserve from the same readings, as close together as two writes go
            go(racer)
        devices = [racer.stdout.readline().strip() for racer in racers]
        assert sorted(devices) == ["cuda:0", "cuda:1"]

        late = start_racer(tmp_path)
        racers.append(late)
        go(late)
        assert late.stdout.readline().strip() == "None"  # both GPUs held, no CPU fallback

        winner = racers[devices.index("cuda:1")]
        winner.send_signal(signal.SIGKILL)  # a crash: no release, the kernel drops the lock
        assert winner.wait(timeout=30) == -signal.SIGKILL
        successor = start_racer(tmp_path)
        racers.append(successor)
        go(successor)
        assert successor.stdout.readline().strip() == "cuda:1"
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
            racer.wait(timeout=30)


def test_the_gpu_resource_holds_its_gpu_for_the_step_and_gives_it_back(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(resources, "probe_devices", lambda: GPUS)  # no GPU here: made-up readings
    seen = {}

    @dg.asset
    def training_step(gpu: GpuResource) -> None:
        seen["step"] = gpu.device()
        seen["again"] = gpu.device()  # the same step asking twice keeps its GPU
        neighbour = GpuResource(lock_dir=gpu.lock_dir, allow_cpu_fallback=False)  # another step, now
        seen["neighbour"] = neighbour.device()
        with pytest.raises(RuntimeError, match="nowhere to train: no free GPU .*reserved by another step"):
            GpuResource(lock_dir=gpu.lock_dir, allow_cpu_fallback=False).device()
        neighbour.release()

    assert dg.materialize([training_step], resources={"gpu": GpuResource(lock_dir=str(tmp_path))}).success
    assert seen == {"step": "cuda:1", "again": "cuda:1", "neighbour": "cuda:0"}
    after = reserve(GPUS, **RULE, allow_cpu_fallback=False, lock_dir=tmp_path)  # the step ended: its lock is gone
    assert after.placement.device == "cuda:1"
    after.release()


def test_the_lock_folder_is_shared_by_every_user(tmp_path: Path):
    lock_dir = tmp_path / "locks"
    reserve(GPUS, **RULE, allow_cpu_fallback=False, lock_dir=lock_dir).release()
    assert lock_dir.stat().st_mode & 0o7777 == 0o1777
    assert sorted(os.listdir(lock_dir)) == ["cuda1.lock"]
