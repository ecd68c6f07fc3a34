"""Finished evaluation pieces of a run that has not finished, so that a run killed midway (a session that ends, a
crash, Ctrl-C) redoes only its unfinished pieces when its sweep is launched again.

A run's rows still reach the results file in one batch when it ends (nirvana.evaluation.runner); a piece — one
perplexity column, the zero-shot suite — is a private file under `job.partial_dir/<run id>/`, never a result, and
the folder is removed once the run's rows are recorded. A piece is reused only where nothing that could change its
numbers differs: the same run id (every option that changes a number), the same code and library versions
(`results.versions`: commit, code tree, lm-eval, torch, transformers), the same weights of the evaluated model (a
content digest, so a pruning or recovery that came out differently is never paired with old numbers), and the same
piece with the same settings. So a resumed run's rows equal an uninterrupted run's, timestamps aside.

Written here rather than taken from lm-eval's request cache (`use_cache`): that cache resumes inside the zero-shot
suite, but the requests left are then batched differently, which can move log-likelihoods in the last bits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_file
from ..results import RUN_FIELDS, versions

log = logging.getLogger(__name__)


def weights_digest(model: torch.nn.Module) -> str | None:
    """A content digest of every parameter and buffer (names, dtypes, shapes, bytes); None where a tensor is not a
    plain one (torchao's quantized tensor subclasses), which turns piece reuse off for that run."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            return None
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, no copy for a contiguous CPU tensor
    return h.hexdigest()


class Pieces:
    """The finished pieces of the run `run` (its run id and row columns) under `folder/<run id>/` (folder None: off,
    every piece is computed)."""

    def __init__(self, folder: str | Path | None, run: Mapping[str, Any], model: torch.nn.Module | None = None):
        digest = weights_digest(model) if folder and model is not None else None
        self.folder = Path(folder) / run["run_id"] if folder and digest else None
        # the row columns count too (the device, the dtype), except where this launch keeps its checkpoint
        columns = {k: run.get(k) for k in RUN_FIELDS if k != "checkpoint"}
        self.context = {"run_id": run["run_id"], "columns": columns, "weights": digest, **versions()}
        self.checkpoint = run.get("checkpoint")
        self.reused: list[str] = []

    def get(self, name: str, settings: Any, compute: Callable[[], list[dict]]) -> list[dict]:
        """The rows of piece `name` (with `settings`, anything JSON-serialisable): a finished copy when one matches,
        else `compute()`, kept before it is returned."""
        if self.folder is None:
            return compute()
        key = hashlib.sha256(json.dumps({"piece": name, "settings": settings, **self.context}, sort_keys=True,
                                        default=str).encode()).hexdigest()[:16]
        path = self.folder / f"{re.sub(r'[^A-Za-z0-9_.@-]+', '_', name)}-{key}.json"
        try:
            doc = json.loads(path.read_text())
            if doc.get("key") == key:
                self.reused.append(name)
                log.info("resumed: %s from a finished piece of this run (%s)", name, path)
                return [{**r, "checkpoint": self.checkpoint} if "checkpoint" in r else r for r in doc["rows"]]
        except (OSError, ValueError, AttributeError):
            pass  # absent, or torn by a kill mid-write: compute it
        rows = compute()
        with atomic_file(path) as fh:  # the same encoding as the results file (results.append_rows)
            fh.write(json.dumps({"key": key, "piece": name, "context": self.context, "rows": rows},
                                ensure_ascii=False, default=str))
        return rows

    def clear(self) -> None:
        """Forget this run's pieces (its rows are recorded, or it is recomputed from scratch)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
