"""The KL probe: how far a pruned model is from the dense one on fixed held-out windows (docs/method.md §2–3).

    probe = KLProbe.build(model, tokenizer, calibration_config, cache_dir)   # once per run (nirvana.pipeline)
    probe.rate(plans)                                                        # each plan's KL on the whole probe
    probe.rate(plans, windows=16)                                            # … on its first 16 windows

Every KL-judged decision of a run — the calibration draw, γ = auto, a searched allocation, the final plan's
`kl/probe` row — is rated by the one `KLProbe` the pipeline builds and hands down. With a cache folder (the score
cache) its numbers persist across runs (the KL memo), and so does the dense model's side of every KL (the dense
reference, nirvana.probe.reference): rating a plan costs one pruned forward per probe batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..calibration import CalibrationConfig
from ..scoring.cache import model_fingerprint
from ..surgery.plan import PruningPlan
from . import kl
from .heldout import HeldOut, HeldOutText, heldout_windows
from .kl import (
    KL_TOKEN_CHUNK,
    PLAN_FORWARDS,
    KLMemo,
    kl_memo_path,
    kl_to_dense,
    kls_to_dense,
    memo_probe_key,
    plan_forward,
    token_kls,
)
from .reference import REFERENCE_PRECISIONS, DenseReference, dense_log_probs
from .windows import Probe, build_probe


@dataclass
class ProbeCounts:
    """What a probe has run: pruned forwards (one plan on one probe batch) and the probe tokens they covered."""

    plan_batches: int = 0
    tokens: int = 0
    rated: int = 0  # plans rated with at least one forward (memo misses)


@dataclass
class KLProbe:
    """A model, the fixed probe windows of its run, the memo of every KL measured on them, and (with a cache
    folder) the dense model's log-probabilities on them."""

    model: torch.nn.Module
    windows: Probe
    batch_size: int
    memo: KLMemo
    reference: DenseReference | None = None
    model_key: str | None = None  # the weights' fingerprint (nirvana.scoring.cache.model_fingerprint)
    counts: ProbeCounts = field(default_factory=ProbeCounts)

    @classmethod
    def build(cls, model, tokenizer, c: CalibrationConfig, cache_dir: str | Path | None = None) -> KLProbe:
        """The probe of `c`'s first source. With `cache_dir` (the score cache) KLs persist across runs
        (nirvana.probe.kl_memo_path) and the dense side of every KL is computed once and kept there
        (`c.probe.reference`: its precision)."""
        windows = build_probe(c, tokenizer)
        if cache_dir is None:
            return cls(model, windows, c.probe.batch_size, KLMemo(None))
        key = model_fingerprint(model)
        device = next(model.parameters()).device.type
        probe_key = KLMemo.probe_key(windows.ids, c.probe.batch_size)
        folder = DenseReference.folder_for(cache_dir, key, device, probe_key, c.probe.reference)
        return cls(model, windows, c.probe.batch_size, KLMemo(kl_memo_path(cache_dir, model, key)),
                   DenseReference(model, folder, c.probe.reference), key)

    @property
    def n_windows(self) -> int:
        return int(self.windows.ids.shape[0])

    def whole_batches(self, windows: int | None) -> int:
        """`windows` rounded up to whole probe batches and capped at the probe (None: the whole probe): the prefix
        of the probe a rating on `windows` windows uses."""
        if windows is None:
            return self.n_windows
        if windows < 1:
            raise ValueError(f"a rating needs at least one probe window, got {windows}")
        return min(self.n_windows, math.ceil(windows / self.batch_size) * self.batch_size)

    def rate(self, plans: list[PruningPlan], windows: int | None = None) -> list[float]:
        """Each plan's mean per-token KL(P_dense ‖ P_plan) on the probe — on its first `windows` windows (rounded up
        to whole batches) when given; plans met before on the same windows cost nothing."""
        n = self.whole_batches(windows)
        ids = self.windows.ids[:n]
        if self.memo is not None:
            memo_probe = memo_probe_key(ids, self.batch_size, self.reference)
            keys = {kl.KLMemo.plan_key(p) for p in plans}
            misses = sum(1 for k in keys if (k, memo_probe) not in self.memo.values)
        else:
            misses = len(plans)
        if misses:
            self.counts.rated += misses
            self.counts.plan_batches += misses * math.ceil(n / self.batch_size)
            self.counts.tokens += misses * int(ids.numel())
        return kls_to_dense(self.model, plans, ids, self.batch_size, self.memo, reference=self.reference)

    @property
    def precision_changes_numbers(self) -> bool:
        return self.reference is not None and self.reference.precision != "float32"

    @property
    def record(self) -> dict:
        out = dict(self.windows.record)
        if self.precision_changes_numbers:
            out["reference"] = self.reference.precision
        return out


__all__ = ["KL_TOKEN_CHUNK", "PLAN_FORWARDS", "REFERENCE_PRECISIONS", "DenseReference", "HeldOut", "HeldOutText",
           "KLMemo", "KLProbe", "Probe", "ProbeCounts", "build_probe", "dense_log_probs", "heldout_windows",
           "kl_memo_path", "kl_to_dense", "kls_to_dense", "plan_forward", "token_kls"]
