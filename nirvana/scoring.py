"""Unit saliency: how much each attention group and MLP neuron matters.

Every scorer returns `UnitScores`: one float64 vector per layer and module kind, indexed like the adapter's
units. Scorers are interchangeable objects; allocation only ever sees these vectors.

The NIRVANA scorer (REFERENCE.md §1) is first order on the model *output*, not the loss: under Adam the
training dynamics follow sign-gradient descent, and removing weight W moves the output by about -(df/dW)·W,
so a weight's saliency is |df/dW ⊙ W| and a unit's is the L1 sum over the weights it owns.

Memory: each weight's gradient is reduced to its unit scores the moment autograd finishes it (a
post-accumulate-grad hook) and then freed, so at most one parameter's gradient lives at a time instead of
the whole model's (the official code holds them all, ~80 GB for Llama-3.1-8B). The scores are identical:
|g ⊙ W| needs g only for W itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .adapters import ATTENTION, MODULE_KINDS, ModelAdapter, ParamSlice


@dataclass
class UnitScores:
    attention: list[torch.Tensor]
    mlp: list[torch.Tensor]

    def of(self, kind: str) -> list[torch.Tensor]:
        return self.attention if kind == ATTENTION else self.mlp


def blocked_sum(weight_scores: torch.Tensor, s: ParamSlice, n_units: int) -> torch.Tensor:
    """Sum a per-weight score tensor over each unit's block along `s.dim` → one value per unit the slice
    covers (all `n_units` unless it covers a sub-range: add it into `scores[slice(*s.span(n_units))]`)."""
    start, stop = s.span(n_units)
    blocks = weight_scores.unflatten(s.dim, (stop - start, s.block))
    other = [d for d in range(blocks.ndim) if d != s.dim]
    return blocks.sum(dim=other) if other else blocks


def sum_blocks(vector: torch.Tensor, n_units: int, block: int) -> torch.Tensor:
    """[n_units·block] per-channel values → [n_units] sums of each unit's contiguous block."""
    return vector.reshape(n_units, block).sum(dim=1)


def _zero_scores(adapter: ModelAdapter) -> UnitScores:
    layers = adapter.layers()
    return UnitScores(
        attention=[torch.zeros(layer.attention.n_units, dtype=torch.float64) for layer in layers],
        mlp=[torch.zeros(layer.mlp.n_units, dtype=torch.float64) for layer in layers],
    )


def _slices_by_param(adapter: ModelAdapter, include_bias: bool):
    """id(param) → (param, [(kind, layer, n_units, slice)]): which unit scores each parameter feeds.

    Biases (Qwen2's q/k/v) are removed with their unit but, as in the official code, not scored unless
    `include_bias`: the official criterion sums over weight matrices only.
    """
    owners: dict[int, tuple[torch.nn.Parameter, list[tuple[str, int, int, ParamSlice]]]] = {}
    for layer in adapter.layers():
        for kind in MODULE_KINDS:
            group = layer.group(kind)
            for s in group.slices:
                if s.param_name == "bias" and not include_bias:
                    continue
                owners.setdefault(id(s.param), (s.param, []))[1].append((kind, layer.index, group.n_units, s))
    return owners


class Scorer:
    """Interface: `score(adapter, input_ids) -> UnitScores`."""

    name = "base"
    needs_calibration = True

    def __init__(self, include_bias: bool = False):
        self.include_bias = include_bias

    def score(self, adapter: ModelAdapter, input_ids: torch.Tensor | None) -> UnitScores:
        raise NotImplementedError


class MagnitudeScorer(Scorer):
    """S = |W| with NIRVANA's aggregation (the official code's `magnitude` variant)."""

    name = "magnitude"
    needs_calibration = False

    def score(self, adapter, input_ids=None):
        scores = _zero_scores(adapter)
        for p, entries in _slices_by_param(adapter, self.include_bias).values():
            for kind, layer, n, s in entries:
                scores.of(kind)[layer][slice(*s.span(n))] += blocked_sum(p.detach().float().abs(), s, n).double().cpu()
        return scores


def output_max_target(logits: torch.Tensor) -> torch.Tensor:
    """The official NIRVANA scalar: max over sequence positions, then mean over batch and vocabulary."""
    return logits.float().max(dim=1).values.mean()


class GradientSaliencyScorer(Scorer):
    """|∂f/∂W ⊙ W| for a scalar target f of the calibration forward pass, gradients freed as they arrive."""

    name = "gradient"

    def target(self, adapter: ModelAdapter, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, adapter, input_ids):
        model = adapter.model
        scores = _zero_scores(adapter)
        owners = _slices_by_param(adapter, self.include_bias)
        prunable = {pid: p for pid, (p, _) in owners.items()}

        def reduce_and_free(p: torch.Tensor) -> None:
            w_scores = (p.grad.float() * p.detach().float()).abs()
            for kind, layer, n, s in owners[id(p)][1]:
                scores.of(kind)[layer][slice(*s.span(n))] += blocked_sum(w_scores, s, n).double().cpu()
            p.grad = None

        # Only scored weights need gradients: embeddings, norms and the LM head are never pruned.
        saved_flags = {name: p.requires_grad for name, p in model.named_parameters()}
        hooks: list[Callable] = []
        was_training = model.training
        try:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(id(p) in prunable)
                p.grad = None
            hooks = [p.register_post_accumulate_grad_hook(reduce_and_free) for p in prunable.values()]
            with torch.enable_grad():
                self.target(adapter, input_ids).backward()
        finally:
            for h in hooks:
                h.remove()
            for name, p in model.named_parameters():
                p.requires_grad_(saved_flags[name])
                p.grad = None
            model.train(was_training)
        return scores


class NirvanaScorer(GradientSaliencyScorer):
    """The paper's criterion with the official code's target f (REFERENCE.md §1)."""

    name = "nirvana"

    def target(self, adapter, input_ids):
        return output_max_target(adapter.logits(input_ids))


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over predicted tokens (what `model(ids, labels=ids).loss` computes)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="mean"
    )


class TaylorScorer(GradientSaliencyScorer):
    """LLM-Pruner's first-order Taylor importance: |∂L/∂W ⊙ W| with L the LM loss, summed per unit.

    The only difference from NIRVANA's scorer is the target (loss instead of output), which is the point
    of the paper's comparison. The adapter defines the loss: next-token CE for decoders, the decoder's CE
    on the continuation for encoder-decoders (nirvana.adapters.t5).
    """

    name = "taylor"

    def target(self, adapter, input_ids):
        return adapter.lm_loss(input_ids)


class RandomScorer(Scorer):
    """Seeded i.i.d. uniform unit scores: the floor every criterion must beat."""

    name = "random"
    needs_calibration = False

    def __init__(self, include_bias: bool = False, seed: int = 0):
        super().__init__(include_bias)
        self.seed = seed

    def score(self, adapter, input_ids=None):
        g = torch.Generator().manual_seed(self.seed)
        layers = adapter.layers()
        return UnitScores(
            attention=[torch.rand(layer.attention.n_units, generator=g, dtype=torch.float64) for layer in layers],
            mlp=[torch.rand(layer.mlp.n_units, generator=g, dtype=torch.float64) for layer in layers],
        )


SCORERS: dict[str, type[Scorer]] = {
    "nirvana": NirvanaScorer,
    "magnitude": MagnitudeScorer,
    "taylor": TaylorScorer,
    "random": RandomScorer,
}


def make_scorer(name: str, **kwargs) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose one of {sorted(SCORERS)}")
    return SCORERS[name](**kwargs)


__all__ = [
    "UnitScores", "Scorer", "MagnitudeScorer", "NirvanaScorer", "TaylorScorer", "RandomScorer", "make_scorer",
    "SCORERS",
]
