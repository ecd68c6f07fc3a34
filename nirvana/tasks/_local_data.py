"""lm-eval `custom_dataset` loader for the local_* tasks: reads the JSONL built by `python -m nirvana.assets`.

Why a callable instead of `dataset_path: json` + `data_files`: relative data_files resolve against the
current directory (not the YAML), and absolute ones would hard-code one machine's cache. lm-eval calls
`custom_dataset(**metadata, **dataset_kwargs)` at load time, so the path is resolved here, at run time,
through `nirvana.paths.data_dir()` -- which honours NIRVANA_CACHE -- from any working directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets

try:
    from nirvana import paths
except ImportError:  # lm-eval loads this file by path; fall back to the checkout it lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from nirvana import paths


def load(nirvana_task: str, nirvana_split: str, nirvana_items: int | None = None, **_metadata) -> datasets.DatasetDict:
    """DatasetDict {nirvana_split: rows of <data_dir>/<nirvana_task>.jsonl (the first `nirvana_items` only, when
    given)}; other kwargs (lm-eval passes the task's metadata, e.g. its version and any --metadata) are ignored."""
    path = paths.data_dir() / f"{nirvana_task}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: build the benchmark data first (`make assets` or "
            f"`python -m nirvana.assets build --only benchmarks`), with the same NIRVANA_CACHE."
        )
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if nirvana_items is not None:
        rows = rows[: int(nirvana_items)]
    return datasets.DatasetDict({nirvana_split: datasets.Dataset.from_list(rows)})
