"""The naive full-gradient NIRVANA scorer: the benchmark's reference point, not something to use.

It does what the official code does (docs/method.md §1): every parameter requires grad (embeddings and LM head
included, as after `from_pretrained`), one forward over the whole batch building the full [B, T, V] logits,
one backward, all gradients held at once, then |g ⊙ W| reduced per unit. Same target and reduction as
`nirvana.scoring.NirvanaScorer`, so the scores agree to float rounding — the benchmark checks the plans are
identical — and only the memory schedule differs.
"""

from __future__ import annotations

import torch

from ..adapters import ModelAdapter
from ..scoring.scorers import gradient_saliency, scored_parameters
from ..scoring.targets import output_max_target
from ..scoring.units import UnitScores, add_weight_scores


def full_gradient_scores(adapter: ModelAdapter, input_ids: torch.Tensor) -> UnitScores:
    model = adapter.model
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            output_max_target(adapter.logits(input_ids)).backward()
        scores = UnitScores.zeros(adapter)
        for p, entries in scored_parameters(adapter, include_bias=False).values():
            add_weight_scores(scores, gradient_saliency(p), entries)
        return scores
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])
            p.grad = None
        model.train(was_training)
