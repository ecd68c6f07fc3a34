"""The Python API: score → plan → apply → save, each step callable alone.

    from nirvana.pruning import score_units, plan_from_scores, prune
    scores = score_units(model, calib_ids, "nirvana")            # UnitScores
    plan = plan_from_scores(model, scores, sparsity=0.5, gamma=3.36)
    apply_plan(model, plan); save_pruned(model, plan, "out/", tokenizer)

`prune(model, ids, ...)` chains the first three.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapters import ModelAdapter, get_adapter
from .allocation import ARITHMETIC_OFFICIAL, SPARE_HIGHEST_INDEX, allocate, validate_hyperparameters
from .plan import LayerPlan, PruningPlan
from .scoring import Scorer, UnitScores, make_scorer
from .surgery import apply_plan, count_parameters


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


def _as_scorer(scorer: str | Scorer) -> Scorer:
    return make_scorer(scorer) if isinstance(scorer, str) else scorer


def score_units(model: nn.Module, input_ids: torch.Tensor | None, scorer: str | Scorer = "nirvana") -> UnitScores:
    adapter = get_adapter(model)
    scorer = _as_scorer(scorer)
    if scorer.needs_calibration:
        if input_ids is None:
            raise ValueError(f"scorer {scorer.name!r} needs calibration ids")
        validate_calibration(input_ids, adapter)
        input_ids = input_ids.to(device=next(model.parameters()).device, dtype=torch.long)
    return scorer.score(adapter, input_ids)


def plan_from_scores(
    model: nn.Module,
    scores: UnitScores,
    sparsity: float,
    gamma: float = 1.0,
    allocator: str = "global",
    round_to: int = 8,
    spare_rule: str = SPARE_HIGHEST_INDEX,
    arithmetic: str = ARITHMETIC_OFFICIAL,
    pruner: str = "nirvana",
    model_name: str | None = None,
    extra: dict | None = None,
) -> PruningPlan:
    adapter = get_adapter(model)
    layers = adapter.layers()
    kept = allocate(layers, scores, sparsity, gamma, allocator, round_to, spare_rule, arithmetic)
    params_before = count_parameters(model)
    removed = 0
    layer_plans = []
    for layer, (groups, neurons) in zip(layers, kept):
        removed += (layer.attention.n_units - len(groups)) * layer.attention.unit_cost
        removed += (layer.mlp.n_units - len(neurons)) * layer.mlp.unit_cost
        layer_plans.append(LayerPlan(layer.index, groups, neurons, layer.attention.n_units, layer.mlp.n_units))
    return PruningPlan(
        model=model_name or getattr(model.config, "_name_or_path", "") or model.config.model_type,
        pruner=pruner,
        sparsity=float(sparsity),
        gamma=float(gamma),
        params_before=params_before,
        params_after=params_before - removed,
        layers=layer_plans,
        allocator=allocator,
        group_cost=layers[0].attention.unit_cost,
        neuron_cost=layers[0].mlp.unit_cost,
        extra={"round_to": round_to, "spare_rule": spare_rule, "arithmetic": arithmetic, **(extra or {})},
    )


def compute_plan(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    scorer: str | Scorer = "nirvana",
    sparsity: float = 0.2,
    gamma: float = 1.0,
    allocator: str = "global",
    round_to: int = 8,
    spare_rule: str = SPARE_HIGHEST_INDEX,
    arithmetic: str = ARITHMETIC_OFFICIAL,
    model_name: str | None = None,
    extra: dict | None = None,
) -> PruningPlan:
    validate_hyperparameters(sparsity, gamma, round_to)  # fail before the (expensive) scoring pass
    scorer = _as_scorer(scorer)
    scores = score_units(model, input_ids, scorer)
    return plan_from_scores(
        model, scores, sparsity, gamma, allocator, round_to, spare_rule, arithmetic, scorer.name, model_name, extra
    )


def prune(model: nn.Module, input_ids: torch.Tensor | None, **kwargs) -> tuple[nn.Module, PruningPlan]:
    """Score, plan and cut `model` in place; returns (model, plan)."""
    plan = compute_plan(model, input_ids, **kwargs)
    apply_plan(model, plan)
    return model, plan
