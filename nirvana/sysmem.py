"""How much memory this process holds and how much more it may take: what a memory budget is checked against.

A leaf module (torch only). CPU figures come from Linux's /proc; elsewhere they are None (unknown), and callers
fall back to an explicit cap. CUDA figures come from the caching allocator and the driver.
"""

from __future__ import annotations

from pathlib import Path

import torch

GIB = 2**30
_STATUS = Path("/proc/self/status")
_MEMINFO = Path("/proc/meminfo")


def _kib_field(path: Path, field: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM, …); None off Linux."""
    return _kib_field(_STATUS, field)


def resident_bytes() -> int:
    """This process's resident set (0 where unknown)."""
    return (status_kib("VmRSS") or 0) * 1024


def held_bytes(device: torch.device) -> int:
    """What this process already holds on `device`: resident set on CPU, allocated tensors on CUDA."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return resident_bytes()


def available_bytes(device: torch.device) -> int | None:
    """How much more the process can take on `device` right now: MemAvailable on CPU, the driver's free memory
    on CUDA; None where the system does not say."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        kib = _kib_field(_MEMINFO, "MemAvailable")
        return None if kib is None else kib * 1024
    return None
