"""FLAP (An et al., AAAI 2024) as in its repository's `prune_flap` with metric WIFV and structure AL-AM.

1. Statistics on the UNPRUNED model, at the inputs of o_proj and down_proj, samples folded in one at a
   time: the running token-mean baseline and FLAP's fluctuation recurrence (nirvana.scoring.statistics).
2. Channel metric (WIFV) = fluctuation × Σ_rows W² of that input column; for o_proj the official code
   squares it again (kept: `square_attention=True`).
3. AL-AM allocation: standardize each module's channel metrics within each layer ((x − mean)/std,
   unbiased); an attention unit scores the mean of its channels (a GQA group: its n_rep·head_dim o_proj
   channels); pool all units of all layers, sort descending, weigh attention units by their parameter
   cost in neurons — the official constant 512/3 lives in an integer tensor, i.e. 170, which equals
   int(group cost / neuron cost) for SmolLM2's groups, so `attention_weight="official_int"` uses
   int(c_a/c_m); "exact" uses c_a/c_m — and cut where the cumulative weight is closest to (1 − s) of the
   total; keep units scoring strictly above the cut.
4. Bias compensation: o_proj/down_proj get bias = (baseline of removed channels) @ (removed columns)ᵀ,
   so the block's output on the calibration mean input is unchanged.
Guards (ours): every layer keeps ≥ 1 attention group (FLAP could empty a layer, which has no valid HF
shape); the MLP width is rounded to `round_to` (1 = FLAP's behaviour).
"""

from __future__ import annotations

import torch

from ..adapters import ATTENTION, MODULE_KINDS, ModelAdapter
from ..allocation import apply_guards
from ..scoring.statistics import layerwise_channel_stats
from ..scoring.units import UnitScores, sum_blocks
from ..surgery.compensation import compensation_biases


def wifv_channel_metric(stats, weight: torch.Tensor, square: bool) -> torch.Tensor:
    metric = stats.fluctuation * weight.detach().float().pow(2).sum(dim=0)
    return metric.pow(2) if square else metric


def standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std()  # torch.std is unbiased, as in the official code


def flap_plan(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    sparsity: float,
    round_to: int = 1,
    spare_rule: str = "best_score",
    attention_weight: str = "official_int",
    square_attention: bool = True,
    bias_compensation: bool = True,
    batch_size: int = 8,
    progress: bool = True,
    stats: dict | None = None,
) -> tuple[list[tuple[list[int], list[int]]], UnitScores, dict[int, dict[str, torch.Tensor]] | None]:
    """(kept units per layer, the standardized unit scores, the compensation biases). `stats`: the statistics pass
    of `input_ids` when the caller has run it already (nirvana.scoring.statistics.layerwise_channel_stats)."""
    layers = adapter.layers()
    if stats is None:
        stats = layerwise_channel_stats(adapter, input_ids, batch_size=batch_size, progress=progress)
    scores = UnitScores(attention=[], mlp=[])
    for layer in layers:
        for kind in MODULE_KINDS:
            group = layer.group(kind)
            s = group.output_projection()
            channel = standardize(wifv_channel_metric(stats[(layer.index, kind)], s.param, square_attention and kind == ATTENTION))
            unit = sum_blocks(channel, group.n_units, s.block) / s.block
            scores.of(kind).append(unit.double().cpu())

    c_a, c_m = layers[0].attention.unit_cost, layers[0].mlp.unit_cost
    if attention_weight == "official_int":
        w_a = float(c_a // c_m)
    elif attention_weight == "exact":
        w_a = c_a / c_m
    else:
        raise ValueError(f"unknown attention_weight {attention_weight!r}; choose 'official_int' or 'exact'")
    att, mlp = torch.stack(scores.attention), torch.stack(scores.mlp)
    pool = torch.cat([att.flatten(), mlp.flatten()])
    order = torch.sort(pool, descending=True)
    weights = torch.ones_like(pool)
    weights[: att.numel()] = w_a
    cumulative = torch.cumsum(weights[order.indices], 0)
    cut = torch.argmin(torch.abs(cumulative - weights.sum() * (1 - sparsity)))
    threshold = order.values[cut]
    pruned_att = [~(row > threshold) for row in att]
    pruned_mlp = [~(row > threshold) for row in mlp]
    kept = apply_guards(scores, pruned_att, pruned_mlp, round_to, spare_rule)

    return kept, scores, compensation_biases(layers, kept, stats) if bias_compensation else None
