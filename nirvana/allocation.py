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

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from .adapters import LayerUnits
from .units import UnitScores

SPARE_HIGHEST_INDEX = "highest_index"  # the official code: drops the last of the ascending pruned indices
SPARE_BEST_SCORE = "best_score"
SPARE_RULES = (SPARE_HIGHEST_INDEX, SPARE_BEST_SCORE)


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


def validate_hyperparameters(sparsity: float, gamma: float, round_to: int = 8) -> None:
    if not isinstance(sparsity, int | float) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if not isinstance(gamma, int | float) or not gamma > 0 or math.isinf(gamma):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")


# `gamma=auto`: the candidates tried, each plan judged by its KL to the dense model on the fixed probe (beyond the
# paper, which hand-tunes γ per model: 3.36 for Llama-3.1-8B, 3.0 for Llama-3.2-3B). Below 1 prunes attention harder.
AUTO_GAMMAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.36, 4.0, 5.0)


def gamma_candidates(gamma) -> list[float]:
    """γ as a run gives it — a number, `auto` (AUTO_GAMMAS) or a list to choose from — as the list of candidates
    (one element: no choice to make). Each is validated."""
    if gamma == "auto":
        values = list(AUTO_GAMMAS)
    elif isinstance(gamma, list | tuple):
        values = list(gamma)
        if not values:
            raise ValueError("gamma: an empty list of candidates; give a number, a non-empty list or auto")
    else:
        values = [gamma]
    for g in values:
        if isinstance(g, bool) or not isinstance(g, int | float) or not g > 0 or math.isinf(g):
            raise ValueError(f"gamma must be a finite number > 0, a list of them, or auto; got {gamma!r}")
    return [float(g) for g in values]


def grid_edge(asked: list[float], chosen: float) -> str | None:
    """"largest" or "smallest" when the KL chose an end of a list of at least three γ, where the grid, not the KL,
    may have stopped the search (at 20 % on SmolLM2 `auto` chose its top value, 5.0); None inside the list."""
    if len(asked) < 3:  # two values: an end either way, and the list was the user's deliberate choice
        return None
    return "largest" if chosen == max(asked) else "smallest" if chosen == min(asked) else None


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


def _uniform_cost(layers: list[LayerUnits], kind: str) -> int:
    costs = {layer.group(kind).weight_cost for layer in layers}  # the official budget counts weights only
    if len(costs) != 1:
        raise ValueError(f"{kind} units cost different numbers of parameters across layers: {sorted(costs)}")
    return costs.pop()


def _by_stack(layers: list[LayerUnits]) -> dict[str, list[int]]:
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
    stacks = _by_stack(layers)
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
        _uniform_cost(layers, "attention"),
        n_neurons,
        _uniform_cost(layers, "mlp"),
        sparsity,
        gamma,
        arithmetic,
    )


def _pruned_by_global_threshold(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Boolean masks: unit pruned iff its score ≤ the k-th smallest score of the pool (ties prune more)."""
    if k <= 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    pool = torch.cat(scores)
    k = min(k, pool.numel())
    threshold = torch.sort(pool).values[k - 1]
    return [s <= threshold for s in scores]


def pruned_below_rank(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Prune the units scoring below the score at index k of the ascending sort (FLAP's and Wanda-sp's rule:
    units tying with the cut are kept, so ties can keep a little more)."""
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    return scores < torch.sort(scores).values[k]  # k < n: a layer never loses every unit


def layer_range_mask(n_layers: int, layer_start: int = 0, layer_end: int | None = None) -> list[bool]:
    """Which layers a uniform allocator may prune; negative `layer_end` counts from the end (Python slice)."""
    indices = range(n_layers)[layer_start:layer_end]
    if len(indices) == 0:
        raise ValueError(f"layer range [{layer_start}, {layer_end}) selects no layer of {n_layers}")
    return [i in indices for i in range(n_layers)]


RATIO_MATCHED = "matched"
RATIO_LITERAL = "literal"

POOL_MODEL = "model"  # one pool per module type over every stack (the default)
POOL_STACK = "stack"  # encoder-decoder: each stack its own budget and thresholds
POOLS = (POOL_MODEL, POOL_STACK)


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


def allocate(
    layers: list[LayerUnits],
    scores: UnitScores,
    sparsity: float,
    gamma: float,
    method: str = "global",
    round_to: int = 8,
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
        pools = list(_by_stack(layers).values()) if pool == POOL_STACK else [list(range(len(layers)))]
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


ALLOCATORS = ("global", "uniform")
