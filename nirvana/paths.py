"""Where built assets live.

Model weights and benchmark data are never committed: `make assets` builds them into a git-ignored cache.
Its location is `$NIRVANA_CACHE` (default: `<repo>/.cache/nirvana`), so a lab can share one cache.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    return Path(os.environ.get("NIRVANA_CACHE", REPO_ROOT / ".cache" / "nirvana")).expanduser().resolve()


def models_dir() -> Path:
    return cache_dir() / "models"


def data_dir() -> Path:
    """Benchmark items as JSONL, one file per task (read by the lm-eval task YAMLs in nirvana/tasks)."""
    return cache_dir() / "data"


def text_dir() -> Path:
    """Plain-text sets for calibration and perplexity (JSONL with a "text" field)."""
    return cache_dir() / "text"


def smollm2_dir() -> Path:
    return models_dir() / "SmolLM2-135M-Instruct"


def qwen2_5_coder_dir() -> Path:
    return models_dir() / "Qwen2.5-Coder-0.5B-Instruct"


def tasks_dir() -> Path:
    """The lm-eval task YAMLs shipped with the package (pass as lm-eval's include_path)."""
    return Path(__file__).resolve().parent / "tasks"
