"""Experiment loggers with one API (`log_config`, `log_rows`, `finish`), chosen by config.

Result rows stay the source of truth; a logger only mirrors them. `NullLogger` does nothing (nanoGPT's
trick instead of `if wandb:` branches everywhere). `WandbLogger` runs offline unless told otherwise and
never fails or blocks a run: if wandb cannot start (not logged in, no network), it warns and becomes a
NullLogger.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class LoggerConfig:
    """conf/logger/*.yaml (under `job.logger`): none, or wandb's project and mode."""

    kind: str = "none"  # none | wandb
    project: str = "nirvana"
    mode: str = "offline"  # wandb: offline unless told otherwise (online needs an account)

    def __post_init__(self) -> None:
        if self.kind not in ("none", "wandb"):
            raise ValueError(f"unknown logger {self.kind!r}; choose none or wandb")


class NullLogger:
    def log_config(self, config: dict[str, Any]) -> None: ...

    def log_rows(self, rows: Iterable[dict[str, Any]]) -> None: ...

    def finish(self) -> None: ...


class WandbLogger(NullLogger):
    def __init__(self, project: str = "nirvana", mode: str = "offline", run_name: str | None = None,
                 group: str | None = None, dir: str | None = None):
        self.run = None
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(project=project, mode=mode, name=run_name, group=group, dir=dir,
                                  reinit="finish_previous")
        except Exception as err:  # noqa: BLE001 — a mirror must never take the run down with it
            warnings.warn(f"wandb logging disabled ({type(err).__name__}: {err}); result rows are unaffected",
                          stacklevel=2)

    def log_config(self, config):
        if self.run is not None:
            self.run.config.update(config, allow_val_change=True)

    def log_rows(self, rows):
        if self.run is None:
            return
        metrics = {}
        for r in rows:
            key = r["metric"] if r["task"] in ("speed", "pruning", "calibration") or "/" in r["metric"] else f"{r['task']}/{r['metric']}"
            metrics[key] = r["value"]
        self.run.log(metrics)
        self.run.summary.update(metrics)

    def finish(self):
        if self.run is not None:
            self.run.finish()


def make_logger(c: LoggerConfig) -> NullLogger:
    if c.kind == "none":  # the result rows are the record; nothing mirrors them
        return NullLogger()
    return WandbLogger(project=c.project, mode=c.mode)
