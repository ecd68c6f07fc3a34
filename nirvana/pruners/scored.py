"""Score-then-allocate methods: NIRVANA, magnitude, Taylor and random. A scorer rates every unit (nirvana.scoring);
an allocator decides how many units of each kind every layer keeps (nirvana.allocation): NIRVANA's global γ
threshold by default, a uniform ratio for LLM-Pruner's Taylor."""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import LayerUnits, get_adapter
from ..allocation import (
    ARITHMETIC_OFFICIAL,
    ROUND_TO,
    SPARE_HIGHEST_INDEX,
    allocate,
    check_feasible,
    layer_range_mask,
    uniform_fractions,
)
from ..scoring.cache import cache_key, load_scores, save_scores
from ..scoring.scorers import GradientSaliencyScorer, Scorer, make_scorer
from ..scoring.statistics import layerwise_channel_stats
from ..scoring.units import UnitScores
from ..surgery.compensation import compensation_biases
from ..surgery.plan import PruningPlan
from .base import Pruner, make_plan, prepare_ids
from .search import SEARCH, search_config, searched_plan

# How gradient scorers run, not what they compute: never part of the scores' cache key choice below, and dropped
# for the scorers that run no forward pass.
MEMORY_OPTIONS = ("micro_batch_size", "checkpointing", "vocab_chunk", "schedule", "memory_budget_gib",
                  "time_tolerance")
SCORER_OPTIONS = ("include_bias", "seed", *MEMORY_OPTIONS)  # the scorer's own; the rest are the allocator's
# Recomputing a block gives bit-identical activations, so checkpointing does not change the scores and does not
# split the score cache; micro-batching may change the last bits (summation order), so the cache key holds the
# micro-batch size actually run, whoever chose it.
SAME_SCORES = ("checkpointing", "schedule", "memory_budget_gib", "time_tolerance")


def plan_from_scores(
    model: nn.Module,
    scores: UnitScores,
    sparsity: float,
    gamma: float = 1.0,
    allocator: str = "global",
    round_to: int = ROUND_TO,
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
    """The plan an allocator makes of `scores`. `channel_stats` (nirvana.scoring.statistics.layerwise_channel_stats
    of the unpruned model on the calibration batch): give the output projections the removed channels' mean
    contribution as a bias (nirvana.surgery.compensation)."""
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
    return make_plan(model, layers, kept, sparsity, gamma, pruner, allocator, model_name,
                     {**options, **(extra or {})}, output_bias=bias)


class ScoredPruner(Pruner):
    """A scorer (by name: nirvana.scoring.SCORERS) and the allocator its options name."""

    def __init__(self, name: str, needs_calibration: bool = True):
        self.name, self.needs_calibration = name, needs_calibration

    def chooses_gamma(self, options: dict) -> bool:
        return options.get("allocator", "global") == "global"

    def check(self, layers: list[LayerUnits], sparsity: float, gamma: float, options: dict) -> None:
        if options.get("allocator", "global") in ("global", SEARCH):  # the search starts from the global plan
            check_feasible(layers, sparsity, gamma)
        else:
            in_range = layer_range_mask(len(layers), options.get("layer_start", 0), options.get("layer_end"))
            uniform_fractions(layers, sparsity, gamma, in_range, options.get("ratio", "matched"))

    def plans(self, model, input_ids, sparsity, gammas, options, model_name=None, extra=None, score_cache=None,
              progress=True, probe=None, heldout=None, scorer: Scorer | None = None) -> list[PruningPlan]:
        """One plan per γ from ONE scoring pass (γ only moves the budget between attention and MLP, so the unit
        scores are shared). `scorer`: an already built scorer object instead of this method's own (never cached).
        `allocator="search"`: the global allocation of the scores at γ, then the searched allocation from it
        (nirvana.pruners.search), units still ranked by the scores."""
        adapter = get_adapter(model)
        ids = prepare_ids(model, adapter, input_ids, self)
        options = dict(options)
        search = search_config(options.pop("search", None)) if self.searches(options) else None
        options.pop("search", None)
        scorer_kwargs = {k: options.pop(k) for k in SCORER_OPTIONS if k in options}
        if not self.needs_calibration:  # no forward pass, nothing to schedule
            for k in MEMORY_OPTIONS:
                scorer_kwargs.pop(k, None)
        stats = None
        if options.pop("bias_compensation", False):
            if ids is None:
                raise ValueError(f"bias_compensation needs the calibration batch's channel means; pruner "
                                 f"{self.name!r} uses no calibration batch")
            stats = layerwise_channel_stats(adapter, ids, progress=progress)
        own = scorer is None
        scorer = scorer or make_scorer(self.name, **scorer_kwargs)
        schedule = None
        if isinstance(scorer, GradientSaliencyScorer):  # before any real forward pass: fails early if nothing fits
            schedule = scorer.resolve_schedule(adapter, ids)
            if scorer.choice is not None:
                extra = {**(extra or {}), "schedule_choice": scorer.choice.record()}
        scores, key = None, None
        if score_cache and own:
            options_run = {k: v for k, v in scorer_kwargs.items() if k not in SAME_SCORES}
            if schedule is not None and schedule.slices(ids.shape[0]) > 1:
                options_run["micro_batch_size"] = schedule.micro_batch_size
            key = cache_key(model, self.name, options_run, ids)
            scores = load_scores(score_cache, key)
        if scores is None:
            scores = scorer.score(adapter, ids).check_finite(f"pruner {self.name!r}")
            if key is not None:
                save_scores(score_cache, key, scores)
        if search is not None:
            options["allocator"] = "global"
        plans = [plan_from_scores(model, scores, sparsity, gamma, pruner=self.name, model_name=model_name,
                                  extra={**scorer_kwargs, **(extra or {})}, channel_stats=stats, **options)
                 for gamma in gammas]
        if search is None:
            return plans
        layers = adapter.layers()
        bias = (lambda kept: compensation_biases(layers, kept, stats)) if stats is not None else None
        return [searched_plan(model, scores, plan, search, probe, heldout, bias, score_cache, progress)
                for plan in plans]


def score_units(model: nn.Module, input_ids: torch.Tensor | None, scorer: str | Scorer = "nirvana") -> UnitScores:
    """Unit scores of any scorer (by name, or a built one) on a calibration batch."""
    scorer = make_scorer(scorer) if isinstance(scorer, str) else scorer
    adapter = get_adapter(model)
    ids = prepare_ids(model, adapter, input_ids, ScoredPruner(scorer.name, scorer.needs_calibration))
    return scorer.score(adapter, ids)
