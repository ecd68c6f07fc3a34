"""Peak memory of one region of code, on CUDA (allocator statistics) or CPU (the process's resident peak).

CPU: Linux's VmHWM (peak resident set size) is reset on entry by writing "5" to /proc/self/clear_refs, so the
peak belongs to the region rather than to the process's whole life. It counts everything resident — the
model included — which is what decides whether a job fits; `extra_bytes` subtracts what was resident on
entry. Freed memory that the C allocator keeps can inflate later regions, so benchmarks measure each
variant in a fresh process (nirvana.bench.isolate).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..sysmem import resident_bytes, status_kib

_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_resident_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _resident_peak_bytes() -> int:
    kib = status_kib("VmHWM")
    if kib is None:  # not Linux: the process-lifetime peak is the best there is
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


@dataclass
class PeakMemory:
    """`with PeakMemory(device) as m: ...` → m.peak_bytes, m.base_bytes, m.extra_bytes, m.how."""

    device: str | torch.device = "cpu"
    peak_bytes: int = 0
    base_bytes: int = 0
    how: str = ""

    def __enter__(self):
        dev = torch.device(self.device)
        self._cuda = dev.type == "cuda"
        if self._cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            self.base_bytes = torch.cuda.memory_allocated(dev)
            self.how = "torch.cuda.max_memory_allocated"
        else:
            scoped = _reset_resident_peak()
            self.base_bytes = resident_bytes()
            self.how = "VmHWM after clear_refs" if scoped else "ru_maxrss (process lifetime)"
        return self

    def __exit__(self, *exc):
        if self._cuda:
            dev = torch.device(self.device)
            torch.cuda.synchronize(dev)
            self.peak_bytes = torch.cuda.max_memory_allocated(dev)
        else:
            self.peak_bytes = _resident_peak_bytes()
        return False

    @property
    def extra_bytes(self) -> int:
        return max(self.peak_bytes - self.base_bytes, 0)


GIB = 2**30


def set_memory_cap(device: str | torch.device, cap_gib: float | None) -> None:
    """Cap what torch may allocate on a CUDA `device` at `cap_gib` (None: lift the cap); a no-op on CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()  # torch 2.11 wants an index
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(1.0 if cap_gib is None else min(cap_gib * GIB / total, 1.0), index)


def measure(fn, device: str | torch.device = "cpu"):
    """Run `fn()` once → (record, its value). Record: seconds (CUDA work included), peak/base/extra bytes and
    how they were measured; or {"oom": True, "error": …} with value None when the device ran out of memory."""
    dev = torch.device(device)
    try:
        with PeakMemory(dev) as mem:
            t0 = time.perf_counter()
            value = fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - t0
    except torch.OutOfMemoryError as e:
        return {"oom": True, "error": str(e).splitlines()[0][:300]}, None
    return {"oom": False, "seconds": seconds, "peak_bytes": mem.peak_bytes, "base_bytes": mem.base_bytes,
            "extra_bytes": mem.extra_bytes, "memory_measure": mem.how}, value
