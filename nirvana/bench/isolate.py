"""Run one measurement in a fresh Python process, so that one variant's freed-but-kept memory (and its warm
caches) cannot flatter or penalise the next. The child prints one JSON line; that line is the result.

Memory measurements (`fixed_mmap=True`, the scoring benchmark) run the child with a fixed glibc mmap threshold
(MALLOC_MMAP_THRESHOLD_). By default glibc raises that threshold as large blocks are freed, after which freed
tensor memory can stay resident: the same scoring run then peaks ~0.5 GiB higher or lower from one process to
the next (measured on SmolLM2). With a fixed threshold every large tensor is unmapped when freed, resident
memory tracks live tensors, and repeats agree to the MiB; it applies to every variant alike (time included).
Time-only benchmarks leave glibc alone: unmapping every large block slows allocation-heavy code (the shared-
prefix evaluation ran 1.46× slower under it, measured)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
WORKERS = {
    "scoring": "nirvana.bench.scoring:measure_scoring",
    "statistics": "nirvana.bench.statistics:measure_statistics",
    "kl": "nirvana.bench.kl:measure_kl",
    "kl_fitness": "nirvana.bench.kl_fitness:measure_kl_fitness",
    "zeroshot": "nirvana.bench.zeroshot:measure_zeroshot",
    "reference": "nirvana.bench.zeroshot:reference_loglikelihoods",
}


def run_timed(cmd: list[str], what: str, cwd: str | None = None, extra_env: dict | None = None,
              timeout: float | None = None) -> tuple[float, str]:
    """Run `cmd` to completion → (wall seconds, its stdout); a failure raises with the end of its output."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return seconds, proc.stdout


def run_isolated(worker: str, timeout: float | None = None, fixed_mmap: bool = False, **kwargs) -> dict:
    if worker not in WORKERS:
        raise ValueError(f"unknown worker {worker!r}; choose one of {sorted(WORKERS)}")
    cmd = [sys.executable, "-m", "nirvana.bench.isolate", worker, json.dumps(kwargs)]
    _, stdout = run_timed(cmd, f"benchmark worker {worker} {kwargs}", extra_env=CHILD_ENV if fixed_mmap else None,
                          timeout=timeout)
    return json.loads(stdout.strip().splitlines()[-1])


def _main(argv: list[str]) -> None:
    import importlib

    worker, kwargs = argv[0], json.loads(argv[1])
    module, func = WORKERS[worker].split(":")
    result = getattr(importlib.import_module(module), func)(**kwargs)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
