"""Choosing a calibration batch by KL (the paper's third contribution, automated; docs/method.md §3).

The paper observes that pruning decisions depend strongly on the calibration data and selects the data whose
pruned model stays closest to the dense one; the official code only measures the KL and hard-codes the chosen
seed per model. Here the selection is a procedure, run by nirvana.pipeline: draw candidate calibration sets
(`kl`: K seeds of one source, or one set per source; `kl_per_sample`: every distinct window of those sets alone),
plan each, rate every plan on the fixed probe (nirvana.probe), keep the lowest KL. This module holds the
candidates and what the choice records; it plans and measures nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..surgery.plan import PruningPlan


@dataclass
class Candidate:
    label: str  # e.g. "lambada_tail/seed=3"
    source: str
    seed: int
    ids: torch.Tensor
    texts: list[str] = field(repr=False, default_factory=list)
    kl: float | None = None
    plan: PruningPlan | None = field(repr=False, default=None)  # the plan this draw induces

    def record(self) -> dict:
        return {"label": self.label, "source": self.source, "seed": self.seed, "kl": self.kl}


def lowest(candidates: list[Candidate]) -> int:
    """The index of the rated candidate with the lowest KL (the first one on ties)."""
    return min(range(len(candidates)), key=lambda i: candidates[i].kl)


def plan_stability(plans: list[PruningPlan]) -> dict | None:
    """How much the decision depends on the calibration draw: the IoU of kept units (PruningPlan.kept_iou) over
    every pair of the draws' plans, per module kind — mean and min (None: fewer than two plans)."""
    pairs = [a.kept_iou(b) for i, a in enumerate(plans) for b in plans[i + 1:]]
    if not pairs:
        return None
    out = {kind: {"mean": sum(p[kind] for p in pairs) / len(pairs), "min": min(p[kind] for p in pairs)}
           for kind in ("attention", "mlp")}
    return out | {"draws": len(plans), "pairs": len(pairs)}


def per_sample_candidates(candidates: list[Candidate]) -> list[Candidate]:
    """Split candidate sets into single windows (distinct texts only), for `kl_per_sample`."""
    out, seen = [], set()
    for c in candidates:
        for row, text in zip(c.ids, c.texts or [None] * len(c.ids)):
            key = text if text is not None else tuple(row.tolist())
            if key in seen:
                continue
            seen.add(key)
            out.append(Candidate(f"{c.label}/sample={len(out)}", c.source, c.seed, row[None], [text] if text else []))
    return out
