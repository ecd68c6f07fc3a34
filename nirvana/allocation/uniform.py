"""The uniform allocator: the same pruned fractions in every layer of a range, as LLM-Pruner and Wanda-sp do."""

from __future__ import annotations

import torch

from ..adapters import LayerUnits
from .guards import pruned_below_rank


def layer_range_mask(n_layers: int, layer_start: int = 0, layer_end: int | None = None) -> list[bool]:
    """Which layers a uniform allocator may prune; negative `layer_end` counts from the end (Python slice)."""
    indices = range(n_layers)[layer_start:layer_end]
    if len(indices) == 0:
        raise ValueError(f"layer range [{layer_start}, {layer_end}) selects no layer of {n_layers}")
    return [i in indices for i in range(n_layers)]


RATIO_MATCHED = "matched"
RATIO_LITERAL = "literal"

def uniform_fractions(
    layers: list[LayerUnits], sparsity: float, gamma: float, in_range: list[bool], ratio: str
) -> tuple[float, float]:
    """Per-layer pruned fractions (attention, MLP) for layers inside the range; γ = MLP/attention.

    `matched` (default): chosen so that the parameters removed equal `sparsity` of ALL attention+MLP
    parameters, so methods compare at equal sparsity even when some layers are left intact.
    `literal`: LLM-Pruner's flag semantics — `sparsity` is the fraction of units (heads/neurons, not
    parameters) removed in each layer of the range, so the model-wide sparsity comes out lower.
    """
    if ratio == RATIO_LITERAL:
        f_a = sparsity
    elif ratio == RATIO_MATCHED:
        def cost(layer: LayerUnits, mlp_weight: float) -> float:
            return layer.attention.n_units * layer.attention.unit_cost + mlp_weight * layer.mlp.n_units * layer.mlp.unit_cost

        total = sum(cost(layer, 1.0) for layer in layers)
        in_scope = sum(cost(layer, gamma) for layer, inside in zip(layers, in_range) if inside)
        f_a = sparsity * total / in_scope
    else:
        raise ValueError(f"unknown ratio mode {ratio!r}; choose {RATIO_MATCHED!r} or {RATIO_LITERAL!r}")
    f_m = gamma * f_a
    if f_a >= 1 or f_m >= 1:
        raise ValueError(
            f"sparsity {sparsity} with γ={gamma} needs pruned fractions attention={f_a:.3f}, mlp={f_m:.3f} inside "
            "the layer range; both must stay below 1 (widen the range or lower the sparsity)"
        )
    return f_a, f_m


def uniform_counts(layer: LayerUnits, f_a: float, f_m: float, ratio: str) -> tuple[list[int], int]:
    """Units one layer of the range loses: (attention, per part of its group; MLP neurons).

    Attention counts are floored, int(f·n) per part, as LLM-Pruner and Wanda-sp do: a layer of 3 GQA groups
    loses none at f = 0.2. `literal` floors the MLP too, so the model keeps more than asked. `matched` gives the
    MLP what the floor left of the layer's parameter budget, f_a·N_a·c_a + f_m·N_m·c_m, so the parameters
    removed equal the requested sparsity to within a neuron per layer (methods then compare at equal size)."""
    a, m = layer.attention, layer.mlp
    k_parts = [int(f_a * (stop - start)) for start, stop in a.parts()]
    if ratio == RATIO_LITERAL:
        return k_parts, int(f_m * m.n_units)
    budget = f_a * a.n_units * a.unit_cost + f_m * m.n_units * m.unit_cost
    k_m = round((budget - sum(k_parts) * a.unit_cost) / m.unit_cost)
    return k_parts, min(max(k_m, 0), m.n_units - 1)


def uniform_pruned(layer: LayerUnits, scores_a: torch.Tensor, scores_m: torch.Tensor, f_a: float, f_m: float,
                   ratio: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pruned masks of one layer under a uniform ratio: the lowest-scoring units of each part (`uniform_counts`)."""
    k_parts, k_m = uniform_counts(layer, f_a, f_m, ratio)
    att = torch.zeros_like(scores_a, dtype=torch.bool)
    for (start, stop), k in zip(layer.attention.parts(), k_parts):
        att[start:stop] = pruned_below_rank(scores_a[start:stop], k)
    return att, pruned_below_rank(scores_m, k_m)
