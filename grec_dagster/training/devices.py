"""Which device a training step should use, from what the GPUs report right now.

Reading memory and load through NVML (`nvidia-ml-py`, imported as `pynvml`) when it is importable
costs no CUDA context, which matters in a long-lived sensor process; without it torch's
`mem_get_info` gives free memory but not utilization. Choosing is plain Python over those
readings (`place`), so the rule is testable on a machine without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # accelerate imports torch: only a training step pays for it
    from accelerate import Accelerator

MIB = 1024 * 1024


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


def place(devices: list[DeviceStatus], min_free_mb: int, max_utilization: float, allow_cpu_fallback: bool) -> Placement:
    """The GPU with the most free memory among those with room, else the CPU if allowed, else nowhere."""
    fitting = [
        d for d in devices if d.free_mb >= min_free_mb and (d.utilization is None or d.utilization <= max_utilization)
    ]
    if fitting:
        best = max(fitting, key=lambda d: d.free_mb)
        return Placement(f"cuda:{best.index}", best.describe())
    if devices:
        why = "; ".join(d.describe() for d in devices)
        why = f"no GPU has {min_free_mb} MiB free at <= {max_utilization:.0f}% utilization ({why})"
    else:
        why = "no CUDA device"
    if allow_cpu_fallback:
        return Placement("cpu", f"{why}; training on the CPU (fallback allowed)")
    return Placement(None, f"{why}, and CPU fallback is off")


def accelerator_for(device: str) -> Accelerator:
    """An `accelerate` handle for `fit` that trains on `device` (`cpu` or `cuda:N`)."""
    import torch
    from accelerate import Accelerator

    if device == "cpu":
        return Accelerator(cpu=True)
    torch.cuda.set_device(torch.device(device))
    return Accelerator()
