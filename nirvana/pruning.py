"""The Python API: score → plan → apply → save, each step callable alone.

    from nirvana.pruning import compute_plan, score_units, plan_from_scores
    plan = compute_plan(model, calib_ids, "nirvana", sparsity=0.5, gamma=3.36)   # any pruner
    plans = compute_plans(model, calib_ids, "nirvana", 0.5, [1.0, 3.36])        # one scoring pass, a plan per γ
    scores = score_units(model, calib_ids, "nirvana")                            # or step by step
    plan = plan_from_scores(model, scores, sparsity=0.5, gamma=3.36)
    apply_plan(model, plan); save_pruned(model, plan, "out/", tokenizer)

Pruners: `nirvana`, `magnitude`, `taylor`, `random` score units and hand the scores to an allocator
(`global` or `uniform`); `wanda_sp` and `flap` allocate as part of the method (nirvana.baselines).
"""

from __future__ import annotations

import torch
from torch import nn

from .adapters import LayerUnits, ModelAdapter, get_adapter
from .allocation import ARITHMETIC_OFFICIAL, SPARE_HIGHEST_INDEX, allocate, validate_hyperparameters
from .compensation import compensation_biases
from .plan import LayerPlan, PruningPlan
from .scoring import SCORERS, GradientSaliencyScorer, Scorer, make_scorer
from .statistics import layerwise_channel_stats
from .surgery import apply_plan, count_parameters
from .units import UnitScores

PRUNERS = (*SCORERS, "wanda_sp", "flap")
CALIBRATION_FREE = ("magnitude", "random")
# Options of the scorer itself (nirvana.scoring), as opposed to the allocator's.
MEMORY_OPTIONS = ("micro_batch_size", "checkpointing", "vocab_chunk",  # how gradient scorers run, not what
                  "schedule", "memory_budget_gib", "time_tolerance")
SCORER_OPTIONS = ("include_bias", "seed", *MEMORY_OPTIONS)
# Recomputing a block gives bit-identical activations, so checkpointing does not change the scores and
# does not split the score cache; micro-batching may change the last bits (summation order), so the cache
# key holds the micro-batch size actually run, whoever chose it.
_SAME_SCORES = ("checkpointing", "schedule", "memory_budget_gib", "time_tolerance")


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


def _prepare_ids(model: nn.Module, adapter: ModelAdapter, input_ids, pruner: str) -> torch.Tensor | None:
    if pruner in CALIBRATION_FREE:
        return None
    if input_ids is None:
        raise ValueError(f"pruner {pruner!r} needs calibration ids")
    validate_calibration(input_ids, adapter)
    return input_ids.to(device=next(model.parameters()).device, dtype=torch.long)


def score_units(model: nn.Module, input_ids: torch.Tensor | None, scorer: str | Scorer = "nirvana") -> UnitScores:
    adapter = get_adapter(model)
    scorer = make_scorer(scorer) if isinstance(scorer, str) else scorer
    ids = _prepare_ids(model, adapter, input_ids, scorer.name if scorer.needs_calibration else "magnitude")
    return scorer.score(adapter, ids)


def _make_plan(model, layers: list[LayerUnits], kept, sparsity, gamma, pruner, allocator, model_name, extra,
               output_bias=None) -> PruningPlan:
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
        pruner=pruner,
        sparsity=float(sparsity),
        gamma=float(gamma),
        params_before=params_before,
        params_after=params_before - removed,
        layers=layer_plans,
        allocator=allocator,
        group_cost=layers[0].attention.unit_cost,
        neuron_cost=layers[0].mlp.unit_cost,
        extra=dict(extra or {}),
        output_bias=output_bias,
    )


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
    layer_start: int = 0,
    layer_end: int | None = None,
    ratio: str = "matched",
    pool: str = "model",
    channel_stats: dict | None = None,
) -> PruningPlan:
    """`channel_stats` (nirvana.statistics.layerwise_channel_stats of the unpruned model on the calibration batch):
    give the output projections the removed channels' mean contribution as a bias (nirvana.compensation)."""
    layers = get_adapter(model).layers()
    kept = allocate(layers, scores, sparsity, gamma, allocator, round_to, spare_rule, arithmetic,
                    layer_start, layer_end, ratio, pool)
    options = {"round_to": round_to, "spare_rule": spare_rule, "arithmetic": arithmetic}
    bias = compensation_biases(layers, kept, channel_stats) if channel_stats is not None else None
    if bias is not None:
        options["bias_compensation"] = True
    if pool != "model":  # encoder-decoder models: a budget per stack (nirvana.allocation)
        options["pool"] = pool
    if allocator == "uniform":
        options.update(layer_start=layer_start, layer_end=layer_end, ratio=ratio)
    return _make_plan(model, layers, kept, sparsity, gamma, pruner, allocator, model_name,
                      {**options, **(extra or {})}, output_bias=bias)


def compute_plan(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    pruner: str | Scorer = "nirvana",
    sparsity: float = 0.2,
    gamma: float = 1.0,
    model_name: str | None = None,
    extra: dict | None = None,
    score_cache: str | None = None,
    **options,
) -> PruningPlan:
    """Any pruner by name. `options` are the pruner's own (see conf/pruner/<name>.yaml); unknown ones raise.

    `score_cache`: a folder where score-based pruners keep their unit scores (nirvana.score_cache), so a
    sweep over sparsity or γ scores each (model, scorer, calibration) once."""
    return compute_plans(model, input_ids, pruner, sparsity, [gamma], model_name, extra, score_cache, **options)[0]


def compute_plans(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    pruner: str | Scorer,
    sparsity: float,
    gammas: list[float],
    model_name: str | None = None,
    extra: dict | None = None,
    score_cache: str | None = None,
    **options,
) -> list[PruningPlan]:
    """One plan per γ in `gammas` from ONE scoring pass: γ only moves the budget between attention and MLP, so
    the unit scores are shared (what choosing γ by KL relies on). Pruners that allocate as part of the method
    (wanda_sp, flap) take a single γ."""
    name = pruner.name if isinstance(pruner, Scorer) else pruner
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; choose one of {sorted(PRUNERS)}")
    if not gammas:
        raise ValueError("compute_plans needs at least one γ")
    for gamma in gammas:  # before any expensive pass
        validate_hyperparameters(sparsity, gamma, options.get("round_to", 8))
    adapter = get_adapter(model)
    if name in adapter.unsupported_pruners:
        supported = [p for p in PRUNERS if p not in adapter.unsupported_pruners]
        raise ValueError(
            f"pruner {name!r} does not apply to {model.config.model_type} models ({type(adapter).__name__}); "
            f"supported pruners: {', '.join(supported)}"
        )
    if name in ("wanda_sp", "flap") and len(gammas) > 1:
        raise ValueError(f"pruner {name!r} allocates as part of the method: it takes one γ, not {list(gammas)}")
    ids = _prepare_ids(model, adapter, input_ids, name)

    if name in ("wanda_sp", "flap"):
        from .baselines.flap import flap_plan
        from .baselines.wanda_sp import wanda_sp_plan

        gamma, bias = gammas[0], None
        if name == "wanda_sp":
            kept, scores = wanda_sp_plan(adapter, ids, sparsity, gamma, **options)
            allocator = "uniform"
        else:
            kept, scores, bias = flap_plan(adapter, ids, sparsity, **options)
            allocator = "standardized_global"
        scores.check_finite(name)
        return [_make_plan(model, adapter.layers(), kept, sparsity, gamma, name, allocator, model_name,
                           {**options, **(extra or {})}, output_bias=bias)]

    scorer_kwargs = {k: options.pop(k) for k in SCORER_OPTIONS if k in options}
    if name in CALIBRATION_FREE:  # no forward pass, nothing to schedule (magnitude/random inherit nirvana.yaml)
        for k in MEMORY_OPTIONS:
            scorer_kwargs.pop(k, None)
    stats = None
    if options.pop("bias_compensation", False):
        if ids is None:
            raise ValueError(f"bias_compensation needs the calibration batch's channel means; pruner {name!r} "
                             f"uses no calibration batch")
        stats = layerwise_channel_stats(adapter, ids)
    scorer = pruner if isinstance(pruner, Scorer) else make_scorer(name, **scorer_kwargs)
    schedule = None
    if isinstance(scorer, GradientSaliencyScorer):  # before any real forward pass: fails early if nothing fits
        schedule = scorer.resolve_schedule(adapter, ids)
        if scorer.choice is not None:
            extra = {**(extra or {}), "schedule_choice": scorer.choice.record()}
    scores, key = None, None
    if score_cache and not isinstance(pruner, Scorer):
        from .score_cache import cache_key, load_scores, save_scores

        options_run = {k: v for k, v in scorer_kwargs.items() if k not in _SAME_SCORES}
        if schedule is not None and schedule.slices(ids.shape[0]) > 1:
            options_run["micro_batch_size"] = schedule.micro_batch_size
        key = cache_key(model, name, options_run, ids)
        scores = load_scores(score_cache, key)
    if scores is None:
        scores = scorer.score(adapter, ids).check_finite(f"pruner {name!r}")
        if key is not None:
            save_scores(score_cache, key, scores)
    return [plan_from_scores(model, scores, sparsity, gamma, pruner=name, model_name=model_name,
                             extra={**scorer_kwargs, **(extra or {})}, channel_stats=stats, **options)
            for gamma in gammas]


def prune(model: nn.Module, input_ids: torch.Tensor | None, **kwargs) -> tuple[nn.Module, PruningPlan]:
    """Plan and cut `model` in place; returns (model, plan). kwargs as `compute_plan`."""
    plan = compute_plan(model, input_ids, **kwargs)
    apply_plan(model, plan)
    return model, plan
