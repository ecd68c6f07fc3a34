"""How many units a sparsity removes: the official closed-form budget of NIRVANA's global allocation (docs/method.md
§2), its feasibility limits, and the hyperparameter checks every allocator shares."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..adapters import LayerUnits


@dataclass(frozen=True)
class Budget:
    """Units to prune in total: k_attention groups and k_mlp neurons."""

    k_attention: int
    k_mlp: int


ARITHMETIC_OFFICIAL = "official"
ARITHMETIC_EXACT = "exact"


def closed_form_budget(
    n_layers: int,
    n_groups: int,
    group_cost: int,
    n_neurons: int,
    neuron_cost: int,
    sparsity: float,
    gamma: float,
    arithmetic: str = ARITHMETIC_OFFICIAL,
) -> Budget:
    """The official closed form for a model of `n_layers` identical layers (N_a groups, N_m neurons each).

    Solve k_a·c_a + k_m·c_m = s·L·(N_a·c_a + N_m·c_m) with k_m/(L·N_m) = γ·k_a/(L·N_a):
        k_a = s·L·(N_a·c_a + N_m·c_m) / (c_a + γ·c_m·N_m/N_a),   k_m = γ·k_a·N_m/N_a,
    k_m from the UN-truncated k_a, then both truncated (Llama-3.1-8B, s=0.5, γ=3.36 → 44 and 265,197).

    `arithmetic="official"` evaluates it in the official code's floating-point order (costs in units of
    d_model, the attention/MLP ratio first): where the exact value is an integer, rounding error can land
    just below it and truncation then drops one unit (SmolLM2 at s=0.3, γ=1: 26 groups / 13,823 neurons
    instead of 27 / 13,824). That is the default, for exact parity with the official plans;
    `arithmetic="exact"` evaluates it in rational arithmetic instead.
    """
    if arithmetic == ARITHMETIC_EXACT:
        # Fraction(str(x)): the decimal the user wrote (0.3 → 3/10), not its nearest binary float
        s, g = Fraction(str(sparsity)), Fraction(str(gamma))
        k_a = s * n_layers * (n_groups * group_cost + n_neurons * neuron_cost) / (
            group_cost + g * neuron_cost * Fraction(n_neurons, n_groups)
        )
        return Budget(int(k_a), int(g * k_a * Fraction(n_neurons, n_groups)))
    if arithmetic != ARITHMETIC_OFFICIAL:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; choose {ARITHMETIC_OFFICIAL!r} or {ARITHMETIC_EXACT!r}")
    d_model = neuron_cost / 3  # a SwiGLU neuron owns 3·d_model weights
    a = group_cost / d_model  # = 2·head_dim·(n_rep + 1), an integer for these architectures
    if a == int(a):
        a = int(a)
    per_layer = (a * n_groups + n_neurons * 3) * sparsity
    ratio = (a * n_groups) / (n_neurons * 3) * (1 / gamma) * 3 / a  # = N_a / (γ·N_m)
    k_a = per_layer / (a + 1 / ratio * 3) * n_layers
    return Budget(int(k_a), int(k_a / ratio))


def validate_hyperparameters(sparsity: float, gamma: float, round_to: int = 1) -> None:
    if not isinstance(sparsity, int | float) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if not isinstance(gamma, int | float) or not gamma > 0 or math.isinf(gamma):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")


# `gamma=auto`: the candidates tried, each plan judged by its KL to the dense model on the fixed probe (beyond the
# paper, which hand-tunes γ per model: 3.36 for Llama-3.1-8B, 3.0 for Llama-3.2-3B). Below 1 prunes attention harder.
def largest_feasible_sparsity(layers: list[LayerUnits], gamma: float) -> float:
    """The largest sparsity the global allocation can meet at this γ: the MLP's pruned fraction is γ times the
    attention's, and neither can reach 1 (fractions from the closed form's totals; a supremum, not attained)."""
    a = sum(layer.attention.n_units * layer.attention.weight_cost for layer in layers)
    m = sum(layer.mlp.n_units * layer.mlp.weight_cost for layer in layers)
    return (a + gamma * m) / (max(1.0, gamma) * (a + m))


def check_feasible(layers: list[LayerUnits], sparsity: float, gamma: float) -> None:
    """Refuse a (sparsity, γ) the global allocation cannot meet — it would clip and under-prune silently."""
    limit = largest_feasible_sparsity(layers, gamma)
    if sparsity >= limit:
        a = sum(layer.attention.n_units * layer.attention.weight_cost for layer in layers)
        m = sum(layer.mlp.n_units * layer.mlp.weight_cost for layer in layers)
        f_a = sparsity * (a + m) / (a + gamma * m)
        raise ValueError(f"sparsity {sparsity} with γ={gamma} asks the global allocation to remove {gamma * f_a:.3f} "
                         f"of the MLP neurons and {f_a:.3f} of the attention groups; with γ={gamma} the largest "
                         f"feasible sparsity is below {limit:.3f} (lower the sparsity, or move γ towards 1)")


def uniform_cost(layers: list[LayerUnits], kind: str) -> int:
    costs = {layer.group(kind).weight_cost for layer in layers}  # the official budget counts weights only
    if len(costs) != 1:
        raise ValueError(f"{kind} units cost different numbers of parameters across layers: {sorted(costs)}")
    return costs.pop()


def by_stack(layers: list[LayerUnits]) -> dict[str, list[int]]:
    """Positions in `layers` of each stack's layers, in order of first appearance."""
    stacks: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        stacks.setdefault(layer.stack, []).append(i)
    return stacks


def budget_for(layers: list[LayerUnits], sparsity: float, gamma: float, arithmetic: str = ARITHMETIC_OFFICIAL) -> Budget:
    """The closed form needs identical layers, i.e. a dense model (plans always refer to the dense model).

    With several stacks (encoder-decoder), layers must be identical within each stack (a T5 decoder layer
    holds twice the encoder's heads); the closed form only depends on totals, so it runs on the model's
    N_a = Σ groups and N_m = Σ neurons as one "layer" (unit costs must still agree across stacks).
    """
    stacks = by_stack(layers)
    for name, idx in stacks.items():
        widths = {(layers[i].attention.n_units, layers[i].mlp.n_units) for i in idx}
        if len(widths) != 1:
            where = f" in stack {name!r}" if name else ""
            raise ValueError(f"allocation needs a dense model with identical layers{where}; found widths {sorted(widths)}")
    if len(stacks) == 1:
        n_layers = len(layers)
        n_groups, n_neurons = layers[0].attention.n_units, layers[0].mlp.n_units
    else:
        n_layers = 1
        n_groups = sum(layer.attention.n_units for layer in layers)
        n_neurons = sum(layer.mlp.n_units for layer in layers)
    return closed_form_budget(
        n_layers,
        n_groups,
        uniform_cost(layers, "attention"),
        n_neurons,
        uniform_cost(layers, "mlp"),
        sparsity,
        gamma,
        arithmetic,
    )
