"""Pruning methods, found by name in one registry, and the step-by-step Python API.

    from nirvana.pruners import compute_plan, score_units, plan_from_scores
    plan = compute_plan(model, calib_ids, "nirvana", sparsity=0.5, gamma=3.36)   # any method
    plans = compute_plans(model, calib_ids, "nirvana", 0.5, [1.0, 3.36])        # one scoring pass, a plan per γ
    scores = score_units(model, calib_ids, "nirvana")                            # or step by step
    plan = plan_from_scores(model, scores, sparsity=0.5, gamma=3.36)
    apply_plan(model, plan); save_pruned(model, plan, "out/", tokenizer)       # nirvana.surgery

`nirvana`, `magnitude`, `random`, `taylor` score units and hand the scores to an allocator (pruners/scored.py);
`wanda_sp` and `flap` allocate as part of the method (pruners/layerwise.py). A new method is a `Pruner` (base.py)
added to PRUNERS.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import get_adapter
from ..allocation import ROUND_TO, validate_hyperparameters
from ..scoring.scorers import Scorer
from ..surgery.cut import apply_plan
from ..surgery.plan import PruningPlan
from .base import Pruner, make_plan, validate_calibration
from .layerwise import FlapPruner, WandaSpPruner
from .scored import ScoredPruner, plan_from_scores, score_units

# In the order tables list them.
PRUNERS: dict[str, Pruner] = {p.name: p for p in (
    ScoredPruner("nirvana"), ScoredPruner("magnitude", needs_calibration=False),
    ScoredPruner("random", needs_calibration=False), ScoredPruner("taylor"), WandaSpPruner(), FlapPruner())}


def get_pruner(name: str) -> Pruner:
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; choose one of {sorted(PRUNERS)}")
    return PRUNERS[name]


def compute_plans(model: nn.Module, input_ids: torch.Tensor | None, pruner: str | Scorer, sparsity: float,
                  gammas: list[float], model_name: str | None = None, extra: dict | None = None,
                  score_cache: str | None = None, progress: bool = True, probe=None, heldout=None,
                  **options) -> list[PruningPlan]:
    """One plan per γ in `gammas`: from ONE scoring pass for the methods with NIRVANA's global allocation (what
    choosing γ by KL relies on); the others take a single γ. `options` are the method's own
    (conf/pruner/<name>.yaml; unknown ones raise). `score_cache`: a folder where score-based methods keep their unit
    scores (nirvana.scoring.cache), so a sweep over sparsity or γ scores each (model, scorer, calibration) once.
    `allocator="search"` (nirvana.pruners.search) rates its candidates on `probe` (a KLProbe) and reports each
    generation's best on `heldout` (a HeldOut; optional)."""
    scorer = pruner if isinstance(pruner, Scorer) else None
    method = get_pruner(scorer.name if scorer else pruner)
    if not gammas:
        raise ValueError("compute_plans needs at least one γ")
    for gamma in gammas:  # before any expensive pass
        validate_hyperparameters(sparsity, gamma, options.get("round_to", ROUND_TO))
    adapter = get_adapter(model)
    if method.name in adapter.unsupported_pruners:
        supported = [p for p in PRUNERS if p not in adapter.unsupported_pruners]
        raise ValueError(f"pruner {method.name!r} does not apply to {model.config.model_type} models "
                         f"({type(adapter).__name__}); supported pruners: {', '.join(supported)}")
    if len(gammas) > 1 and not method.chooses_gamma(options):
        raise ValueError(f"pruner {method.name!r} allocates as part of the method: it takes one γ, not {list(gammas)}")
    kwargs = {"scorer": scorer} if scorer is not None else {}
    return method.plans(model, input_ids, sparsity, list(gammas), options, model_name, extra, score_cache, progress,
                        probe=probe, heldout=heldout, **kwargs)


def compute_plan(model: nn.Module, input_ids: torch.Tensor | None, pruner: str | Scorer = "nirvana",
                 sparsity: float = 0.2, gamma: float = 1.0, model_name: str | None = None, extra: dict | None = None,
                 score_cache: str | None = None, **options) -> PruningPlan:
    """Any method by name (or a built scorer): `compute_plans` at one γ."""
    return compute_plans(model, input_ids, pruner, sparsity, [gamma], model_name, extra, score_cache, **options)[0]


def prune(model: nn.Module, input_ids: torch.Tensor | None, **kwargs) -> tuple[nn.Module, PruningPlan]:
    """Plan and cut `model` in place; returns (model, plan). kwargs as `compute_plan`."""
    plan = compute_plan(model, input_ids, **kwargs)
    apply_plan(model, plan)
    return model, plan


__all__ = ["PRUNERS", "Pruner", "compute_plan", "compute_plans", "get_pruner", "make_plan", "plan_from_scores",
           "prune", "score_units", "validate_calibration"]
