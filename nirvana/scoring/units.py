"""Unit scores: one value per attention group and MLP neuron of every layer, and how they are summed up.

`UnitScores` is what every criterion produces and what every allocator consumes (one float64 vector per layer
and module kind, indexed like the adapter's units). The reductions below turn per-weight or per-channel values
into unit values along the blocks a `ParamSlice` describes, so no criterion spells out a model's layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import ATTENTION, ModelAdapter, ParamSlice


@dataclass
class UnitScores:
    attention: list[torch.Tensor]
    mlp: list[torch.Tensor]

    def of(self, kind: str) -> list[torch.Tensor]:
        return self.attention if kind == ATTENTION else self.mlp

    @classmethod
    def zeros(cls, adapter: ModelAdapter) -> UnitScores:
        layers = adapter.layers()
        return cls(attention=[torch.zeros(layer.attention.n_units, dtype=torch.float64) for layer in layers],
                   mlp=[torch.zeros(layer.mlp.n_units, dtype=torch.float64) for layer in layers])

    def non_finite(self) -> list[tuple[str, int, int]]:
        """(kind, layer, unit) of every NaN/inf score — a criterion that produced one is broken."""
        bad = []
        for kind in (ATTENTION, "mlp"):
            for layer, s in enumerate(self.of(kind)):
                bad += [(kind, layer, int(u)) for u in torch.nonzero(~torch.isfinite(s)).flatten().tolist()]
        return bad

    def check_finite(self, what: str) -> UnitScores:
        """Stop on NaN/inf scores, naming where: a NaN is never pruned (NaN ≤ threshold is false) and can make
        the threshold itself NaN, so the plan would be silently wrong."""
        bad = self.non_finite()
        if bad:
            where = ", ".join(f"layer {layer} {kind} unit {u}" for kind, layer, u in bad[:5])
            raise ValueError(f"{what} gave {len(bad)} non-finite unit scores ({where}{', …' if len(bad) > 5 else ''}): "
                             "check the weights and the calibration batch for NaN/inf")
        return self


def blocked_sum(weight_scores: torch.Tensor, s: ParamSlice, n_units: int) -> torch.Tensor:
    """Sum a per-weight score tensor over each unit's block along `s.dim` → one value per unit the slice
    covers (all `n_units` unless it covers a sub-range: add it into `scores[slice(*s.span(n_units))]`)."""
    start, stop = s.span(n_units)
    blocks = weight_scores.unflatten(s.dim, (stop - start, s.block))
    other = [d for d in range(blocks.ndim) if d != s.dim]
    return blocks.sum(dim=other) if other else blocks


def add_weight_scores(scores: UnitScores, weight_scores: torch.Tensor, entries) -> None:
    """Add one parameter's per-weight scores into the unit scores it feeds (`entries` from
    `nirvana.scoring.scorers.scored_parameters`)."""
    for kind, layer, n, s in entries:
        scores.of(kind)[layer][slice(*s.span(n))] += blocked_sum(weight_scores, s, n).double().cpu()


def sum_blocks(vector: torch.Tensor, n_units: int, block: int) -> torch.Tensor:
    """[n_units·block] per-channel values → [n_units] sums of each unit's contiguous block."""
    return vector.reshape(n_units, block).sum(dim=1)
