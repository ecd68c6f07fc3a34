"""The KL probe: how far a pruned model is from the dense one on fixed held-out windows (docs/method.md §2–3).

    probe = KLProbe.build(model, tokenizer, calibration_config, memo_path)   # once per run (nirvana.pipeline)
    probe.rate(plans)                                                        # each plan's KL, one shared pass

Every KL-judged decision of a run — the calibration draw, γ = auto, the final plan's `kl/probe` row — is rated by
the one `KLProbe` the pipeline builds and hands down.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..calibration import CalibrationConfig
from ..surgery.plan import PruningPlan
from .kl import PLAN_FORWARDS, KLMemo, kl_memo_path, kl_to_dense, kls_to_dense, plan_forward
from .windows import Probe, build_probe


@dataclass
class KLProbe:
    """A model, the fixed probe windows of its run, and the memo of every KL measured on them."""

    model: torch.nn.Module
    windows: Probe
    batch_size: int
    memo: KLMemo

    @classmethod
    def build(cls, model, tokenizer, c: CalibrationConfig, memo_path: str | Path | None = None) -> KLProbe:
        """The probe of `c`'s first source; with `memo_path` (nirvana.probe.kl_memo_path) KLs persist across runs."""
        return cls(model, build_probe(c, tokenizer), c.probe.batch_size, KLMemo(memo_path))

    def rate(self, plans: list[PruningPlan]) -> list[float]:
        """Each plan's mean per-token KL(P_dense ‖ P_plan) on the probe; plans met before cost nothing."""
        return kls_to_dense(self.model, plans, self.windows.ids, self.batch_size, self.memo)

    @property
    def record(self) -> dict:
        return self.windows.record


__all__ = ["PLAN_FORWARDS", "KLMemo", "KLProbe", "Probe", "build_probe", "kl_memo_path", "kl_to_dense",
           "kls_to_dense", "plan_forward"]
