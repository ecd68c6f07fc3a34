"""Wanda-sp: structured Wanda as in the FLAP repository (`prune_wanda_sp`), in our adapters and plans.

Per layer, in order (one layer-wise pass, nirvana.scoring.statistics): collect the mean of x² per input channel of
o_proj and down_proj over the calibration tokens — with the layers before it already pruned —, score each
channel |W|·√(mean x²) averaged over the output rows, sum the channels of each unit, and keep the units scoring
≥ the score at index int(ratio·n) of the ascending sort. The layer is then pruned (here: masked in place,
restored at the end) before the next layer's statistics are taken.
`ratio="literal"` (default, the original): ratio = sparsity, counted in units per layer. With GQA the units
are whole groups: SmolLM2 has 3 per layer, so int(0.2·3) = 0 → no attention is pruned at 0.2 and the model
keeps more parameters than asked. `ratio="matched"`: the MLP takes what the attention floor leaves of each
layer's parameter budget, so the parameters removed equal the requested sparsity (nirvana.allocation).
"""

from __future__ import annotations

import torch

from ..adapters import ATTENTION, MLP, ModelAdapter
from ..allocation import apply_guards, layer_range_mask, uniform_fractions, uniform_pruned
from ..scoring.statistics import layerwise_channel_stats
from ..scoring.units import UnitScores, sum_blocks
from ..surgery.masking import UnitMask


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
    progress: bool = True,
) -> tuple[list[tuple[list[int], list[int]]], UnitScores]:
    layers = adapter.layers()
    in_range = layer_range_mask(len(layers), layer_start, layer_end)
    f_a, f_m = uniform_fractions(layers, sparsity, gamma, in_range, ratio)
    scores = UnitScores(attention=[], mlp=[])
    kept: list[tuple[list[int], list[int]]] = []
    masks: list[UnitMask] = []

    def prune_layer(index: int, stats) -> bool:
        """Score layer `index` on its (already pruned-upstream) inputs and mask what it drops, so the next
        layer's statistics see this layer pruned — the original's sequential order."""
        layer, inside = layers[index], in_range[index]
        a = wanda_unit_scores(layer.attention, stats[ATTENTION].mean_square)
        m = wanda_unit_scores(layer.mlp, stats[MLP].mean_square)
        scores.attention.append(a)
        scores.mlp.append(m)
        pa, pm = uniform_pruned(layer, a, m, f_a * inside, f_m * inside, ratio)  # outside: nothing
        layer_kept = apply_guards(UnitScores([a], [m]), [pa], [pm], round_to, spare_rule)[0]
        kept.append(layer_kept)
        masks.extend((UnitMask(layer.attention, layer_kept[0]), UnitMask(layer.mlp, layer_kept[1])))
        return True

    try:
        layerwise_channel_stats(adapter, input_ids, batch_size, after_layer=prune_layer, progress=progress,
                                desc="wanda-sp layers")
    finally:
        for mask in reversed(masks):
            mask.restore()
    return kept, scores
