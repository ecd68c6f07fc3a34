"""Allocation: how many units of each kind to remove, and where (docs/method.md §2).

`global` (NIRVANA): the budget is split between attention and MLP so that the MLP's pruned fraction is γ
times attention's; then ONE threshold per module type across all layers decides which units go, so layers
that matter less lose more. `uniform` removes the same fractions from every layer (an ablation).

Sparsity is the fraction of attention+MLP parameters removed (embeddings, norms and head never are).
Both allocators return kept indices per layer; the guards (≥1 attention group per layer, kept MLP width a
multiple of `round_to`) are shared. They act per *part* of a group (nirvana.adapters.base): a T5 decoder
layer keeps ≥ 1 self-attention head AND ≥ 1 cross-attention head.

Encoder-decoder models (layers in named stacks): `pool="model"` (default) puts every stack's units in the
one pool per module type — the closed form then runs on the model's totals; `pool="stack"` gives each stack
the same sparsity with its own budget and thresholds.
"""

from __future__ import annotations

import torch

from ..adapters import LayerUnits
from ..scoring.units import UnitScores
from .budget import (
    ARITHMETIC_EXACT,
    ARITHMETIC_OFFICIAL,
    Budget,
    budget_for,
    by_stack,
    check_feasible,
    closed_form_budget,
    largest_feasible_sparsity,
    validate_hyperparameters,
)
from .gamma import AUTO_GAMMAS, gamma_candidates, grid_edge
from .guards import (
    ROUND_TO,
    SPARE_BEST_SCORE,
    SPARE_HIGHEST_INDEX,
    SPARE_RULES,
    apply_guards,
    keep_one_group,
    pruned_below_rank,
    round_kept_width,
)
from .uniform import (
    RATIO_LITERAL,
    RATIO_MATCHED,
    layer_range_mask,
    uniform_counts,
    uniform_fractions,
    uniform_pruned,
)

POOL_MODEL = "model"  # one pool per module type over every stack (the default)
POOL_STACK = "stack"  # encoder-decoder: each stack its own budget and thresholds
POOLS = (POOL_MODEL, POOL_STACK)


def _pruned_by_global_threshold(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Boolean masks: unit pruned iff its score ≤ the k-th smallest score of the pool (ties prune more)."""
    if k <= 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    pool = torch.cat(scores)
    k = min(k, pool.numel())
    threshold = torch.sort(pool).values[k - 1]
    return [s <= threshold for s in scores]


def allocate(
    layers: list[LayerUnits],
    scores: UnitScores,
    sparsity: float,
    gamma: float,
    method: str = "global",
    round_to: int = ROUND_TO,
    spare_rule: str = SPARE_HIGHEST_INDEX,
    arithmetic: str = ARITHMETIC_OFFICIAL,
    layer_start: int = 0,
    layer_end: int | None = None,
    ratio: str = RATIO_MATCHED,
    pool: str = POOL_MODEL,
) -> list[tuple[list[int], list[int]]]:
    """Kept (attention groups, MLP neurons) per layer, as sorted index lists into the dense units.

    `global`: NIRVANA's closed-form budget and one threshold per module type over all layers (`pool="stack"`:
    per stack of an encoder-decoder model; the same as "model" for decoder-only models).
    `uniform`: the same fractions in every layer of [layer_start, layer_end) (others intact), as
    LLM-Pruner and Wanda-sp do; see `uniform_fractions` for the `ratio` modes.
    """
    validate_hyperparameters(sparsity, gamma, round_to)
    if spare_rule not in SPARE_RULES:
        raise ValueError(f"unknown spare rule {spare_rule!r}; choose one of {SPARE_RULES}")
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; choose one of {POOLS}")
    if method == "global":
        pools = list(by_stack(layers).values()) if pool == POOL_STACK else [list(range(len(layers)))]
        att: list = [None] * len(layers)
        mlp: list = [None] * len(layers)
        for idx in pools:
            budget = budget_for([layers[i] for i in idx], sparsity, gamma, arithmetic)
            for i, a in zip(idx, _pruned_by_global_threshold([scores.attention[i] for i in idx], budget.k_attention)):
                att[i] = a
            for i, m in zip(idx, _pruned_by_global_threshold([scores.mlp[i] for i in idx], budget.k_mlp)):
                mlp[i] = m
    elif method == "uniform":
        in_range = layer_range_mask(len(layers), layer_start, layer_end)
        f_a, f_m = uniform_fractions(layers, sparsity, gamma, in_range, ratio)
        att, mlp = [], []
        for layer, a, m, inside in zip(layers, scores.attention, scores.mlp, in_range):
            pa, pm = uniform_pruned(layer, a, m, f_a * inside, f_m * inside, ratio)  # outside: nothing
            att.append(pa)
            mlp.append(pm)
    else:
        raise ValueError(f"unknown allocation method {method!r}; choose one of {ALLOCATORS}")
    return apply_guards(scores, att, mlp, round_to, spare_rule, layers)


ALLOCATORS = ("global", "uniform")


__all__ = [
    "ALLOCATORS", "ARITHMETIC_EXACT", "ARITHMETIC_OFFICIAL", "AUTO_GAMMAS", "POOLS", "POOL_MODEL", "POOL_STACK",
    "RATIO_LITERAL", "RATIO_MATCHED", "ROUND_TO", "SPARE_BEST_SCORE", "SPARE_HIGHEST_INDEX", "SPARE_RULES", "Budget",
    "allocate", "apply_guards", "budget_for", "check_feasible", "closed_form_budget", "gamma_candidates",
    "grid_edge", "keep_one_group", "largest_feasible_sparsity", "layer_range_mask", "pruned_below_rank",
    "round_kept_width", "uniform_counts", "uniform_fractions", "uniform_pruned", "validate_hyperparameters",
]
