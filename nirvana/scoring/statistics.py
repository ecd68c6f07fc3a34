"""Activation statistics of the units' output channels (inputs of o_proj / down_proj), in one layer-wise pass.

Wanda-sp and FLAP judge a unit by what flows through its output projection's input channels. The calibration
batch is embedded once and then carried through the decoder one block at a time (as the FLAP and Wanda
repositories do): block i runs on the stored outputs of block i-1, forward hooks fold its output projections'
inputs into running per-channel statistics, and its outputs become block i+1's inputs. A sequential method
may change block i after its statistics are in (Wanda-sp masks the units it drops); the block is then run
again to produce the inputs the next block sees. Cost: one forward of the model (two for a sequential
method), instead of a truncated forward per layer — quadratic in depth — or one per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..adapters import MODULE_KINDS, ModelAdapter


class ChannelStats:
    """Per input channel of one Linear: token-mean baseline, FLAP fluctuation, mean square."""

    def __init__(self) -> None:
        self.samples = 0
        self.tokens = 0
        self.baseline: torch.Tensor | None = None  # running mean over samples of each sample's token mean
        self.fluctuation: torch.Tensor | None = None
        self.square_sum: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        """x: [batch, tokens, channels]; samples are folded in one at a time, in batch order."""
        x = x.detach().float()
        for sample in x.reshape(-1, x.shape[-2], x.shape[-1]):
            n = self.samples
            if self.baseline is None:
                self.baseline = torch.zeros(sample.shape[-1], dtype=torch.float32, device=sample.device)
                self.fluctuation = torch.zeros_like(self.baseline)
                self.square_sum = torch.zeros_like(self.baseline)
            self.baseline = self.baseline * (n / (n + 1)) + sample.mean(dim=0) / (n + 1)
            # FLAP's recurrence (lib/layerwrapper.py, BiasGPT). Its "old" baseline aliases the updated one
            # (an in-place update), so both factors use the NEW mean, and the first sample adds nothing.
            if n > 0:
                centred = sample - self.baseline
                self.fluctuation = self.fluctuation * ((n - 1) / n) + (centred * centred).sum(dim=0) / (n + 1)
            self.square_sum += (sample * sample).sum(dim=0)
            self.samples += 1
            self.tokens += sample.shape[0]

    @property
    def mean_square(self) -> torch.Tensor:
        """Mean of x² over all calibration tokens (Wanda's ‖x‖² up to a constant factor)."""
        return self.square_sum / self.tokens


LayerStats = dict[str, ChannelStats]  # module kind → statistics of its output projection's inputs


@torch.no_grad()
def layerwise_channel_stats(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    batch_size: int = 8,
    after_layer: Callable[[int, LayerStats], bool] | None = None,
    progress: bool = False,
    desc: str = "activation statistics",
) -> dict[tuple[int, str], ChannelStats]:
    """ChannelStats at the output projections of every layer, from one layer-wise pass (module docstring).

    `after_layer(i, stats_of_layer_i)` runs once block i's statistics are complete; if it returns True (it
    changed the block), the block is run again to produce the next block's inputs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    layers, blocks = adapter.layers(), adapter.blocks()
    was_training = adapter.model.training
    adapter.model.eval()
    stats: dict[tuple[int, str], ChannelStats] = {}
    try:
        # Calibration samples stay in their order across batches, so statistics fold them in batch order.
        carried = [adapter.block_inputs(input_ids[s : s + batch_size]) for s in range(0, input_ids.shape[0], batch_size)]
        for layer, block in tqdm(list(zip(layers, blocks)), desc=desc, disable=not progress, leave=False):
            handles = []
            for kind in MODULE_KINDS:
                s = stats[(layer.index, kind)] = ChannelStats()
                module = layer.group(kind).output_projection().module
                handles.append(module.register_forward_pre_hook(lambda _m, args, _s=s: _s.update(args[0])))
            try:
                outputs = [adapter.run_block(block, hidden, kwargs) for hidden, kwargs in carried]
            finally:
                for h in handles:
                    h.remove()
            if after_layer is not None and after_layer(layer.index, {k: stats[(layer.index, k)] for k in MODULE_KINDS}):
                outputs = [adapter.run_block(block, hidden, kwargs) for hidden, kwargs in carried]
            carried = [(out, kwargs) for out, (_, kwargs) in zip(outputs, carried)]
    finally:
        adapter.model.train(was_training)
    return stats
