"""Which device a training step should use, from what the GPUs report right now.

Reading memory and load through NVML (`nvidia-ml-py`, imported as `pynvml`) when it is importable
costs no CUDA context, which matters in a long-lived sensor process; without it torch's
`mem_get_info` gives free memory but not utilization. Choosing is plain Python over those
readings (`place`), so the rule is testable on a machine without a GPU.

Two steps placed at the same moment read the same numbers and would pick the same GPU, so a step
`reserve`s its GPU: an exclusive `flock` on one file per GPU index in a folder every training
process of the machine shares. The lock lives as long as its file descriptor, so the kernel drops
it when the step releases it or its process dies, however it dies. GPU indices name the same
device in every process only when they all see the same GPUs (the same `CUDA_VISIBLE_DEVICES`),
as the steps Dagster starts on one machine do.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # accelerate imports torch: only a training step pays for it
    from accelerate import Accelerator

MIB = 1024 * 1024
DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "grec-gpu-locks"
"""Machine-local on purpose: a GPU is a machine's, so its lock must not sit on a shared volume."""


@dataclass(frozen=True)
class DeviceStatus:
    index: int
    name: str
    total_mb: int
    free_mb: int
    utilization: float | None
    """Percent of time a kernel ran over the last sample period; None without NVML."""

    def describe(self) -> str:
        load = "utilization unknown" if self.utilization is None else f"{self.utilization:.0f}% busy"
        return f"cuda:{self.index} ({self.name}) {self.free_mb}/{self.total_mb} MiB free, {load}"


@dataclass(frozen=True)
class Placement:
    device: str | None
    """`cuda:N`, `cpu`, or None when nothing may train now."""
    reason: str

    @property
    def gpu(self) -> int | None:
        """The GPU index N of `cuda:N`; None on the CPU or nowhere."""
        if self.device is None or not self.device.startswith("cuda:"):
            return None
        return int(self.device.removeprefix("cuda:"))


@dataclass
class Reservation:
    """A placement and, when it is a GPU, the open lock file that keeps that GPU this step's."""

    placement: Placement
    lock: int | None = None
    """File descriptor holding the GPU's `flock`; None for the CPU or nowhere."""

    def release(self) -> None:
        if self.lock is not None:
            os.close(self.lock)  # closing the descriptor drops the lock
            self.lock = None


def probe_devices() -> list[DeviceStatus]:
    """Every visible CUDA device with its free memory and load; empty on a machine without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    nvml = _nvml()
    devices = []
    for index in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(index)
        if nvml is not None:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            free, total = memory.free, memory.total
            utilization: float | None = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        else:
            free, total = torch.cuda.mem_get_info(index)
            utilization = None
        devices.append(DeviceStatus(index, name, total // MIB, free // MIB, utilization))
    return devices


def _nvml():
    """The initialized NVML module, or None when it is not installed or finds no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError when the driver library is missing
        return None
    return pynvml


def place(
    devices: list[DeviceStatus],
    min_free_mb: int,
    max_utilization: float,
    allow_cpu_fallback: bool,
    reserved: Collection[int] = (),
) -> Placement:
    """The GPU with the most free memory among those with room and not `reserved` by another step,
    else the CPU if allowed, else nowhere."""
    fitting = [
        d
        for d in devices
        if d.index not in reserved
        and d.free_mb >= min_free_mb
        and (d.utilization is None or d.utilization <= max_utilization)
    ]
    if fitting:
        best = max(fitting, key=lambda d: d.free_mb)
        return Placement(f"cuda:{best.index}", best.describe())
    if devices:
        why = "; ".join(d.describe() + (", reserved by another step" if d.index in reserved else "") for d in devices)
        why = f"no free GPU has {min_free_mb} MiB free at <= {max_utilization:.0f}% utilization ({why})"
    else:
        why = "no CUDA device"
    if allow_cpu_fallback:
        return Placement("cpu", f"{why}; training on the CPU (fallback allowed)")
    return Placement(None, f"{why}, and CPU fallback is off")


def reserve(
    devices: list[DeviceStatus],
    min_free_mb: int,
    max_utilization: float,
    allow_cpu_fallback: bool,
    lock_dir: Path = DEFAULT_LOCK_DIR,
) -> Reservation:
    """`place`, and lock the GPU it picks; a GPU another process holds is passed over for the next
    best one, so steps placed at the same moment on the same readings get different GPUs."""
    taken: set[int] = set()
    while True:
        placement = place(devices, min_free_mb, max_utilization, allow_cpu_fallback, taken)
        if placement.gpu is None:
            return Reservation(placement)
        lock = _try_lock(lock_dir, placement.gpu)
        if lock is not None:
            return Reservation(placement, lock)
        taken.add(placement.gpu)


def _try_lock(lock_dir: Path, index: int) -> int | None:
    """An open descriptor holding the exclusive lock of GPU `index`, or None when another holds it."""
    try:
        lock_dir.mkdir(parents=True)
        lock_dir.chmod(0o1777)  # as /tmp: the training steps of every user on this machine share the locks
    except FileExistsError:
        pass
    # flock needs no write access, so a file another user created can still be locked read-only.
    descriptor = os.open(lock_dir / f"cuda{index}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def accelerator_for(device: str) -> Accelerator:
    """An `accelerate` handle for `fit` that trains on `device` (`cpu` or `cuda:N`)."""
    import torch
    from accelerate import Accelerator

    if device == "cpu":
        return Accelerator(cpu=True)
    torch.cuda.set_device(torch.device(device))
    return Accelerator()
