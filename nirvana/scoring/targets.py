"""Scalar targets of a calibration forward pass: what a gradient-based criterion differentiates.

A leaf module (torch only), so that the scorers and the benchmark's naive scorer share one definition; the LM
loss (Taylor's target) is the adapters' own (`ModelAdapter.lm_loss`): what a loss is depends on the family.

- `output_max_target`: NIRVANA's f — the logits' max over sequence positions, then the mean over batch and
  vocabulary (the official code's scalar; docs/method.md §1). Not the LM loss.
- `chunked_output_max_target`: the same number without materialising the [B, T, V] logits.
"""

from __future__ import annotations

import torch


def output_max_target(logits: torch.Tensor) -> torch.Tensor:
    """The official NIRVANA scalar: max over sequence positions, then mean over batch and vocabulary."""
    return logits.float().max(dim=1).values.mean()


def chunked_output_max_target(hidden: torch.Tensor, head: torch.nn.Linear, vocab_chunk: int) -> torch.Tensor:
    """`output_max_target(head(hidden))` without materialising the [B, T, V] logits.

    Each chunk's logits are freed as soon as their max over T is taken (max keeps only the argmax for
    backward); in backward, one chunk's logit gradient exists at a time."""
    if vocab_chunk < 1:
        raise ValueError(f"vocab_chunk must be >= 1, got {vocab_chunk}")
    weight, bias = head.weight, head.bias
    vocab = weight.shape[0]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, vocab, vocab_chunk):
        stop = min(start + vocab_chunk, vocab)
        logits = torch.nn.functional.linear(hidden, weight[start:stop], None if bias is None else bias[start:stop])
        total = total + logits.float().max(dim=1).values.sum()
    return total / (hidden.shape[0] * vocab)
