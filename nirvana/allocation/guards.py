"""The guards every allocation passes through: each part of an attention group keeps ≥ 1 unit (an empty attention
block has no defined shape), and each layer's kept MLP width is rounded up to a multiple of `round_to`."""

from __future__ import annotations

import math

import torch

from ..adapters import LayerUnits
from ..scoring.units import UnitScores

# Kept MLP widths are rounded up to a multiple of this (the official code: 8, tensor-core-friendly shapes).
ROUND_TO = 8

SPARE_HIGHEST_INDEX = "highest_index"  # the official code: drops the last of the ascending pruned indices
SPARE_BEST_SCORE = "best_score"
SPARE_RULES = (SPARE_HIGHEST_INDEX, SPARE_BEST_SCORE)


def pruned_below_rank(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Prune the units scoring below the score at index k of the ascending sort (FLAP's and Wanda-sp's rule:
    units tying with the cut are kept, so ties can keep a little more)."""
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    return scores < torch.sort(scores).values[k]  # k < n: a layer never loses every unit


def keep_one_group(pruned: torch.Tensor, scores: torch.Tensor, rule: str) -> torch.Tensor:
    """A layer must keep ≥ 1 attention group (an empty attention block has no defined shape)."""
    if not bool(pruned.all()):
        return pruned
    pruned = pruned.clone()
    if rule == SPARE_HIGHEST_INDEX:
        pruned[-1] = False
    elif rule == SPARE_BEST_SCORE:
        pruned[int(torch.argmax(scores))] = False
    else:
        raise ValueError(f"unknown spare rule {rule!r}; choose one of {SPARE_RULES}")
    return pruned


def round_kept_width(pruned: torch.Tensor, scores: torch.Tensor, round_to: int) -> torch.Tensor:
    """Round the kept MLP width UP to a multiple of `round_to` (≥ round_to) by sparing the best candidates.

    Multiples of 8 keep matmuls on tensor-core-friendly shapes; rounding up means we never prune more than
    the threshold asked for.
    """
    n = pruned.numel()
    kept = n - int(pruned.sum())
    target = min(n, max(round_to, math.ceil(kept / round_to) * round_to))
    if target <= kept:
        return pruned
    pruned = pruned.clone()
    candidates = torch.nonzero(pruned).flatten()
    order = torch.sort(scores[candidates], descending=True, stable=True).indices
    pruned[candidates[order[: target - kept]]] = False
    return pruned


def apply_guards(
    scores: UnitScores, att: list[torch.Tensor], mlp: list[torch.Tensor], round_to: int, spare_rule: str,
    layers: list[LayerUnits] | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Pruned masks → kept index lists, after the ≥1-group and multiple-of-`round_to` guards (applied to each
    part of a group when `layers` is given; without it every group is one part)."""
    kept = []
    for i in range(len(att)):
        a, m = att[i].clone(), mlp[i].clone()
        parts_a = layers[i].attention.parts() if layers is not None else [(0, a.numel())]
        parts_m = layers[i].mlp.parts() if layers is not None else [(0, m.numel())]
        for x, y in parts_a:
            a[x:y] = keep_one_group(att[i][x:y], scores.attention[i][x:y], spare_rule)
        for x, y in parts_m:
            m[x:y] = round_kept_width(mlp[i][x:y], scores.mlp[i][x:y], round_to)
        kept.append((torch.nonzero(~a).flatten().tolist(), torch.nonzero(~m).flatten().tolist()))
    return kept
