"""The straightforward statistics pass of Wanda-sp and FLAP: the benchmark's reference point, not something to use.

Before the layer-wise pass (nirvana/scoring/statistics.py), the activation statistics came from whole-model forwards with
hooks: FLAP ran the calibration batch through the model once; Wanda-sp, which prunes layer by layer, ran a
forward truncated after layer i for every layer i (with layers < i already masked) — a cost quadratic in depth.
This module keeps that schedule, so `make bench` can time both side by side and check the plans are the same.
"""

from __future__ import annotations

import torch

from ..adapters import ATTENTION, MLP, MODULE_KINDS, ModelAdapter
from ..allocation import apply_guards, layer_range_mask, uniform_fractions, uniform_pruned
from ..baselines.wanda_sp import wanda_unit_scores
from ..scoring.statistics import ChannelStats
from ..scoring.units import UnitScores
from ..surgery.masking import UnitMask


class _Stop(Exception):
    pass


@torch.no_grad()
def forward_statistics(adapter: ModelAdapter, input_ids: torch.Tensor, last_layer: int | None = None,
                       batch_size: int = 8, only: int | None = None) -> dict[tuple[int, str], ChannelStats]:
    """Statistics of layer `only` (or of every layer) from whole-model forwards, stopped after `last_layer`."""
    layers = adapter.layers()
    wanted = [only] if only is not None else list(range(len(layers)))
    stats, handles = {}, []
    for i in wanted:
        for kind in MODULE_KINDS:
            s = stats[(i, kind)] = ChannelStats()
            stop = last_layer is not None and i == last_layer and kind == MODULE_KINDS[-1]

            def hook(_module, args, _s=s, _stop=stop):
                _s.update(args[0])
                if _stop:
                    raise _Stop

            handles.append(layers[i].group(kind).output_projection().module.register_forward_pre_hook(hook))
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            try:
                adapter.logits(input_ids[start : start + batch_size])
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return stats


def wanda_sp_truncated(adapter: ModelAdapter, input_ids: torch.Tensor, sparsity: float, gamma: float = 1.0,
                       round_to: int = 1, spare_rule: str = "best_score", ratio: str = "literal",
                       batch_size: int = 8) -> list[tuple[list[int], list[int]]]:
    """Wanda-sp's kept units, each layer's statistics from a forward truncated after it (earlier layers masked)."""
    layers = adapter.layers()
    in_range = layer_range_mask(len(layers), 0, None)
    f_a, f_m = uniform_fractions(layers, sparsity, gamma, in_range, ratio)
    kept, masks = [], []
    try:
        for layer in layers:
            stats = forward_statistics(adapter, input_ids, layer.index, batch_size, only=layer.index)
            a = wanda_unit_scores(layer.attention, stats[(layer.index, ATTENTION)].mean_square)
            m = wanda_unit_scores(layer.mlp, stats[(layer.index, MLP)].mean_square)
            pa, pm = uniform_pruned(layer, a, m, f_a, f_m, ratio)
            layer_kept = apply_guards(UnitScores([a], [m]), [pa], [pm], round_to, spare_rule)[0]
            kept.append(layer_kept)
            masks += [UnitMask(layer.attention, layer_kept[0]), UnitMask(layer.mlp, layer_kept[1])]
    finally:
        for mask in reversed(masks):
            mask.restore()
    return kept
