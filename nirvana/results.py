"""Tidy result rows: one JSON object per (run, task, metric), appended to a JSONL file.

Everything downstream (tables, figures, notebooks, the wandb mirror, sweeps that skip finished runs) reads
these rows and nothing else, so each row carries its own provenance. The whole API:

    run_id = make_run_id(resolved_config_dict)          # short stable hash
    rows = [make_row(run, task="arc_easy", metric="acc", value=0.48, stderr=0.05, limit=100), ...]
    append_rows("results/rows/evaluate.jsonl", rows)    # one atomic append per batch
    df = read_rows("results/rows/evaluate.jsonl")       # pandas.DataFrame, one row per JSON line
    done = completed_run_ids("results/rows/evaluate.jsonl")

Row fields (ROW_FIELDS, in this order):
  run_id, model, checkpoint, pruner, sparsity, gamma,
  calibration_source, calibration_seed, calibration_selection,
  task, suite, metric, value, stderr, seq_len, limit, n,
  dtype, device, lm_eval_version, torch_version, transformers_version, git_hash, code_tree, timestamp, extra
- `metric` names carry their protocol where one number could mean several things: `ppl/wiki_passages@512`,
  `decode_tok_s@bs1,p128,n64`; lm-eval metrics keep lm-eval's names (`acc`, `acc_norm`).
- `limit` is null for a full-protocol number; otherwise what bounded it (lm-eval's `limit`, or a string such
  as "max_texts=300" for perplexity). Never compare a limited number with a full one unknowingly.
- `n` is how much was scored: items per task (zero-shot), predicted tokens (perplexity), repeats (speed);
  for the zero-shot mean (task "average", metric "mean_task_metric") the number of tasks averaged.
- `git_hash` is the commit of the code ("-dirty" when the work tree differed), `code_tree` the git tree id of
  the code itself, `results/` excluded: a dirty hash whose code tree equals a commit's is that commit's code
  (`nirvana.provenance.commit_with_code`), e.g. a run on a copy of the repository with stale git metadata.
- `extra` is a free dict for details that do not deserve a column (wall time, window count, ...).

Crash safety: each `append_rows` call is all or nothing (temp file + atomic rename, under a lock), so a killed
writer loses at most its own batch and never leaves a partial line or a partial batch. Files touched by other
tools are handled too: readers ignore an unterminated last line and the next writer drops it.
Completeness: `experiments.evaluate` writes all rows of a run in one batch at the end, so a run id present in
the file means that run finished (sweeps that want finer resumption run stages as separate runs).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import functools
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .atomic import atomic_file, iter_jsonl, stale_tmp
from .provenance import code_tree, git_hash

ROW_FIELDS = (
    "run_id", "model", "checkpoint", "pruner", "sparsity", "gamma",
    "calibration_source", "calibration_seed", "calibration_selection",
    "task", "suite", "metric", "value", "stderr", "seq_len", "limit", "n",
    "dtype", "device", "lm_eval_version", "torch_version", "transformers_version", "git_hash", "code_tree",
    "timestamp", "extra",
)
# Describe the evaluated model; the same for every row of a run (see `run_fields`).
RUN_FIELDS = ROW_FIELDS[1:9] + ("dtype", "device")


def make_run_id(config: Mapping[str, Any]) -> str:
    """12 hex digits of sha256 over the config as canonical JSON (sorted keys): equal configs, equal ids,
    across processes and machines. Pass the *resolved* config without bookkeeping keys (output paths)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Package versions, the code's commit (`git_hash`) and the tree id of its content (`code_tree`, which
    verifies a "-dirty" commit recorded on a copy with stale git metadata: nirvana.provenance), once per process."""
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    return {
        "lm_eval_version": pkg("lm-eval"),
        "torch_version": pkg("torch"),
        "transformers_version": pkg("transformers"),
        "git_hash": git_hash(),
        "code_tree": code_tree(),
    }


def _clean(x: Any) -> Any:
    """JSON-safe scalars: numpy/torch numbers → Python, NaN/inf → None (JSON has no NaN)."""
    if hasattr(x, "item") and callable(x.item):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def make_row(run: Mapping[str, Any], task: str, metric: str, value: float, stderr: float | None = None,
             seq_len: int | None = None, limit: Any = None, n: int | None = None, suite: str | None = None,
             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One row: `run` supplies run_id and the RUN_FIELDS (missing ones become null); versions, git hash and
    a UTC timestamp are filled in here."""
    if "run_id" not in run:
        raise ValueError("run must contain a run_id (see make_run_id)")
    row = {k: None for k in ROW_FIELDS}
    row.update({k: run.get(k) for k in ("run_id", *RUN_FIELDS)})
    row.update(task=task, suite=suite, metric=metric, value=_clean(value), stderr=_clean(stderr),
               seq_len=seq_len, limit=limit, n=n, extra=dict(extra or {}))
    row.update(versions())
    row["timestamp"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return row


# --- writing ----------------------------------------------------------------------------------------------
def append_rows(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append rows as JSON lines, all or nothing; returns the number written.

    The new content (old lines + the batch) is written through `nirvana.atomic.atomic_file` (temp file, then one
    rename), so a reader sees the file before or after the batch, never a part of it, even if the writer is
    killed. Writers serialise on an exclusive lock of the folder (parallel sweep workers may share a file); a
    temp file left by a killed writer is removed by the next one. Rewriting costs O(file size) per batch: a few
    MB for thousands of runs, negligible next to any evaluation."""
    lines = [json.dumps(dict(r), ensure_ascii=False, default=str) for r in rows]
    if not lines:
        return 0
    for line in lines:
        if "\n" in line:  # json.dumps escapes newlines; this guards against a future `indent=`
            raise ValueError("a row serialised to more than one line")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        for stale in stale_tmp(path.parent, path.name):  # safe under the lock: only a killed writer leaves these
            stale.unlink(missing_ok=True)
        old = path.read_bytes() if path.exists() else b""
        old = old[: old.rfind(b"\n") + 1]  # drop an unterminated tail (a torn write by some other tool)
        with atomic_file(path, "wb") as fh:
            fh.write(old + ("\n".join(lines) + "\n").encode())
    finally:
        os.close(dir_fd)  # also releases the lock
    return len(lines)


# --- reading ----------------------------------------------------------------------------------------------
def iter_rows(path: str | os.PathLike) -> Iterable[dict[str, Any]]:
    """Rows of one file (none if it does not exist); torn and corrupt lines are skipped (nirvana.atomic.iter_jsonl)."""
    if Path(path).exists():
        yield from iter_jsonl(path, strict=False)


def read_rows(paths: str | os.PathLike | Iterable[str | os.PathLike]):
    """All rows of one or several JSONL files as a pandas DataFrame with ROW_FIELDS first (missing files
    contribute nothing; an empty result still has the columns)."""
    import pandas as pd

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    rows = [r for p in paths for r in iter_rows(p)]
    df = pd.DataFrame(rows)
    for col in ROW_FIELDS:
        if col not in df.columns:
            df[col] = None
    return df[list(ROW_FIELDS) + [c for c in df.columns if c not in ROW_FIELDS]]


def record_run(rows: list[Mapping[str, Any]], run_dir: str | os.PathLike, results_file: str | os.PathLike) -> None:
    """A finished run's rows: a copy in its run folder, then the shared results file — last, because a run id
    present there is what marks the run complete for `completed_run_ids`."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    append_rows(Path(run_dir) / "rows.jsonl", rows)
    append_rows(results_file, rows)


def latest(rows, keys: list[str]):
    """The newest row (by timestamp) of every group of `keys`: the one "latest row per cell" of tables, figures
    and notebooks, so a re-measured cell shows its new value everywhere."""
    return rows.sort_values("timestamp", kind="stable").groupby(keys, as_index=False, dropna=False).last()


def recorded(run_id: str, results_file: str | os.PathLike, sweep: str | None = None) -> bool:
    """Whether `run_id` has rows in `results_file`, i.e. finished (rows are written in one batch at the end) —
    in the sweep `sweep` (its rows' extra.sweep), when given."""
    return any(r.get("run_id") == run_id and (sweep is None or (r.get("extra") or {}).get("sweep") == sweep)
               for r in iter_rows(results_file))


def recorded_in(run_id: str, results_files: Iterable[str | os.PathLike]) -> list[str]:
    """The files among `results_files` where `run_id` finished (a sweep extending another one reads both)."""
    return [str(f) for f in results_files if recorded(run_id, f)]


def completed_run_ids(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> set[str]:
    """Run ids with rows in the file(s). A run's rows are written in one batch at its end, so these runs
    are complete: a sweep skips a config when `make_run_id(config) in completed_run_ids(file)`."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return {r["run_id"] for p in paths for r in iter_rows(p) if r.get("run_id")}
