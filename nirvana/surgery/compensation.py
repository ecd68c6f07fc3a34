"""Bias compensation of removed channels (FLAP, An et al. 2024): what a pruned unit fed into its block's output
projection on an average calibration token becomes a constant, added as that projection's bias.

For an output projection y = W x (o_proj: x the attention heads' outputs; down_proj: the MLP's hidden), removing
channels C drops W[:, C] x[C]; replacing x[C] by its calibration mean x̄[C] keeps y unchanged on the mean input:
bias = W[:, C] x̄[C]. FLAP always does this; for the score-based pruners it is an ablation flag
(`pruner.bias_compensation=true`), computed from the same calibration batch as the scores.
"""

from __future__ import annotations

import torch

from ..adapters import ATTENTION, MLP, LayerUnits


def compensation_biases(layers: list[LayerUnits], kept: list[tuple[list[int], list[int]]],
                        stats: dict[tuple[int, str], object]) -> dict[int, dict[str, torch.Tensor]]:
    """{layer: {kind: bias}} for the output projections, from each channel's calibration mean (`stats[...].baseline`,
    nirvana.scoring.statistics.layerwise_channel_stats
    on the unpruned model: each a ChannelStats); a zero vector where nothing was removed."""
    biases: dict[int, dict[str, torch.Tensor]] = {}
    for layer, (k_att, k_mlp) in zip(layers, kept, strict=True):
        biases[layer.index] = {}
        for kind, keep in ((ATTENTION, k_att), (MLP, k_mlp)):
            group = layer.group(kind)
            s = group.output_projection()
            removed = sorted(set(range(group.n_units)) - set(keep))
            w = s.param.detach().float()
            bias = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
            if removed:
                cols = (torch.as_tensor(removed)[:, None] * s.block + torch.arange(s.block)[None]).flatten().to(w.device)
                bias = stats[(layer.index, kind)].baseline[cols] @ w[:, cols].T
            biases[layer.index][kind] = bias.cpu()
    return biases
