"""What every pruning method is to the pipeline: a `Pruner` that turns (model, calibration, sparsity, γ) into
plans, and the pieces every method shares — calibration checks and building the plan from kept units."""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import LayerUnits, ModelAdapter
from ..surgery.cut import count_parameters
from ..surgery.plan import LayerPlan, PruningPlan


class Pruner:
    """A pruning method, found by `name` in the registry (nirvana.pruners.PRUNERS).

    `plans` returns one plan per γ asked for: methods with NIRVANA's global allocation (`chooses_gamma`) plan every
    γ from ONE scoring pass; the others take a single γ. `check` rejects what the method cannot do on a model,
    from its layers alone (a weightless skeleton will do), before any weights are loaded."""

    name: str = "base"
    needs_calibration: bool = True  # False: the plan depends on the weights alone (magnitude, random)

    def chooses_gamma(self, options: dict) -> bool:
        """Whether γ may be a list chosen by KL: the global γ allocation splits one set of unit scores."""
        return False

    def check(self, layers: list[LayerUnits], sparsity: float, gamma: float, options: dict) -> None:
        """Raise for a (sparsity, γ, options) this method cannot meet on these layers."""

    def plans(self, model: nn.Module, input_ids: torch.Tensor | None, sparsity: float, gammas: list[float],
              options: dict, model_name: str | None = None, extra: dict | None = None,
              score_cache: str | None = None, progress: bool = True, probe=None, heldout=None) -> list[PruningPlan]:
        """`probe` (nirvana.probe.KLProbe) and `heldout` (nirvana.probe.HeldOut): what `allocator: search` rates its
        candidates on and reports beside them (nirvana.pruners.search); other allocators ignore them."""
        raise NotImplementedError

    def searches(self, options: dict) -> bool:
        """Whether these options ask for the searched allocation (nirvana.pruners.search)."""
        return options.get("allocator") == "search"


def validate_calibration(input_ids: torch.Tensor, adapter: ModelAdapter) -> None:
    """Bad calibration fails here, before any forward pass, naming the value and the accepted range."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"calibration must be a LongTensor [n_samples, seq_len], got {type(input_ids).__name__}")
    if input_ids.ndim != 2:
        raise ValueError(f"calibration must be 2-D [n_samples, seq_len], got shape {tuple(input_ids.shape)}")
    if input_ids.numel() == 0:
        raise ValueError(f"calibration is empty (shape {tuple(input_ids.shape)})")
    if input_ids.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(f"calibration ids must be integers, got dtype {input_ids.dtype}")
    context = adapter.max_context()
    if context is not None and input_ids.shape[1] > context:
        raise ValueError(f"calibration seq_len {input_ids.shape[1]} exceeds the model's context of {context} tokens")
    vocab = adapter.vocab_size()
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"calibration ids must lie in [0, {vocab}) (the vocabulary); found [{lo}, {hi}]")


def prepare_ids(model: nn.Module, adapter: ModelAdapter, input_ids, pruner: Pruner) -> torch.Tensor | None:
    """The calibration batch on the model's device (None for a method that reads none)."""
    if not pruner.needs_calibration:
        return None
    if input_ids is None:
        raise ValueError(f"pruner {pruner.name!r} needs calibration ids")
    validate_calibration(input_ids, adapter)
    return input_ids.to(device=next(model.parameters()).device, dtype=torch.long)


def make_plan(model: nn.Module, layers: list[LayerUnits], kept, sparsity: float, gamma: float, pruner: str,
              allocator: str, model_name: str | None, extra: dict | None, output_bias=None) -> PruningPlan:
    """The plan keeping `kept` ([(attention groups, MLP neurons)] per layer) of `model`, with its parameter counts."""
    params_before = count_parameters(model)
    removed = 0
    layer_plans = []
    for layer, (groups, neurons) in zip(layers, kept):
        removed += (layer.attention.n_units - len(groups)) * layer.attention.unit_cost
        removed += (layer.mlp.n_units - len(neurons)) * layer.mlp.unit_cost
        layer_plans.append(LayerPlan(layer.index, groups, neurons, layer.attention.n_units, layer.mlp.n_units))
    if output_bias:  # compensation biases are new parameters: one hidden-size vector per projection that lacks one
        hidden = layers[0].attention.output_projection().param.shape[0]
        removed -= sum(hidden for layer in layers for g in (layer.attention, layer.mlp)
                       if g.output_projection().module.bias is None)
    return PruningPlan(
        model=model_name or getattr(model.config, "_name_or_path", "") or model.config.model_type,
        pruner=pruner, sparsity=float(sparsity), gamma=float(gamma), params_before=params_before,
        params_after=params_before - removed, layers=layer_plans, allocator=allocator,
        group_cost=layers[0].attention.unit_cost, neuron_cost=layers[0].mlp.unit_cost, extra=dict(extra or {}),
        output_bias=output_bias)
