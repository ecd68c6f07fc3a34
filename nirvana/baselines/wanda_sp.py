"""Wanda-sp: structured Wanda as in the FLAP repository (`prune_wanda_sp`), in our adapters and plans.

Per layer, in order: collect the mean of x² per input channel of o_proj and down_proj over the calibration
tokens — with the layers before it already pruned —, score each channel |W|·√(mean x²) averaged over the
output rows, sum the channels of each unit, and keep the units scoring ≥ the score at index int(ratio·n)
of the ascending sort (ratio = sparsity; units, not parameters, as in the original). The layer is then
pruned (here: masked in place, restored at the end) before the next layer's statistics are taken.
With GQA the units are whole groups: SmolLM2 has 3 per layer, so int(0.2·3) = 0 → no attention is pruned
at 0.2 (the GQA fork's behaviour).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..adapters import ATTENTION, MLP, ModelAdapter
from ..allocation import _pruned_by_layer_fraction, apply_guards, layer_range_mask, uniform_fractions
from ..masking import UnitMask
from ..scoring import UnitScores, sum_blocks
from ..statistics import collect_channel_stats


def wanda_unit_scores(group, mean_square: torch.Tensor) -> torch.Tensor:
    s = group.output_projection()
    w = s.param.detach().float()
    channel = (w.abs() * mean_square.to(w).sqrt()[None, :]).mean(dim=0)  # [in channels]
    return sum_blocks(channel, group.n_units, s.block).double().cpu()


def wanda_sp_plan(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    sparsity: float,
    gamma: float = 1.0,
    round_to: int = 1,
    spare_rule: str = "best_score",
    layer_start: int = 0,
    layer_end: int | None = None,
    ratio: str = "literal",
    batch_size: int = 8,
) -> tuple[list[tuple[list[int], list[int]]], UnitScores]:
    layers = adapter.layers()
    in_range = layer_range_mask(len(layers), layer_start, layer_end)
    f_a, f_m = uniform_fractions(layers, sparsity, gamma, in_range, ratio)
    scores = UnitScores(attention=[], mlp=[])
    kept: list[tuple[list[int], list[int]]] = []
    masks: list[UnitMask] = []
    try:
        for layer, inside in tqdm(list(zip(layers, in_range)), desc="wanda-sp layers", leave=False):
            stats = collect_channel_stats(adapter, input_ids, [layer.index], batch_size=batch_size)
            a = wanda_unit_scores(layer.attention, stats[(layer.index, ATTENTION)].mean_square)
            m = wanda_unit_scores(layer.mlp, stats[(layer.index, MLP)].mean_square)
            scores.attention.append(a)
            scores.mlp.append(m)
            pa = _pruned_by_layer_fraction([a], [f_a if inside else 0.0])
            pm = _pruned_by_layer_fraction([m], [f_m if inside else 0.0])
            layer_kept = apply_guards(UnitScores([a], [m]), pa, pm, round_to, spare_rule)[0]
            kept.append(layer_kept)
            # prune this layer before measuring the next one (sequential, as the original)
            masks.append(UnitMask(layer.attention, layer_kept[0]))
            masks.append(UnitMask(layer.mlp, layer_kept[1]))
    finally:
        for mask in reversed(masks):
            mask.restore()
    return kept, scores
