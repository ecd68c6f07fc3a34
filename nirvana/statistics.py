"""Streaming activation statistics of the units' output channels (inputs of o_proj / down_proj).

Wanda-sp and FLAP judge a unit by what flows through its output projection's input channels. Forward hooks
fold each calibration sample into running per-channel statistics as it passes, so no activation tensor
of the calibration set is ever kept.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .adapters import MODULE_KINDS, ModelAdapter


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


class _StopForward(Exception):
    pass


@torch.no_grad()
def collect_channel_stats(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    layer_indices: list[int] | None = None,
    batch_size: int = 8,
    stop_after_last: bool = True,
    progress: bool = False,
) -> dict[tuple[int, str], ChannelStats]:
    """Run the calibration ids through the model and collect ChannelStats at the output projections of
    `layer_indices` (default: all). With `stop_after_last`, each forward stops once the last requested
    layer's MLP has been seen: sequential per-layer methods then pay only for the layers they need."""
    layers = adapter.layers()
    wanted = list(range(len(layers))) if layer_indices is None else list(layer_indices)
    stats: dict[tuple[int, str], ChannelStats] = {}
    handles = []
    last = max(wanted)
    for i in wanted:
        for kind in MODULE_KINDS:
            s = stats[(i, kind)] = ChannelStats()
            module = layers[i].group(kind).output_projection().module
            stop = stop_after_last and i == last and kind == MODULE_KINDS[-1]  # attention runs first

            def hook(_module, args, _s=s, _stop=stop):
                _s.update(args[0])
                if _stop:
                    raise _StopForward

            handles.append(module.register_forward_pre_hook(hook))
    was_training = adapter.model.training
    adapter.model.eval()
    try:
        batches = range(0, input_ids.shape[0], batch_size)
        for start in tqdm(batches, desc="activation statistics", disable=not progress, leave=False):
            try:
                adapter.logits(input_ids[start : start + batch_size])
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
        adapter.model.train(was_training)
    return stats
