"""The one pruning path every entry point uses: calibrate → score → allocate → (KL probe) → cut.

    recipe = PruneRecipe("nirvana", sparsity=0.2, options={"gamma": 3.36},
                         calibration=CalibrationConfig(source="lambada_tail", join=4, seed=12))
    check_recipe(recipe, read_config(path))     # cheap: bad names and values fail before any model is loaded
    outcome = prune(model, tokenizer, recipe)   # the model is cut in place; outcome.plan says how

Everything here is plain Python values (no Hydra): `experiments/*` turn their configs into a `PruneRecipe`,
notebooks build one by hand. The outcome carries what result rows and plans record: the calibration actually
used and how it was chosen (with each KL candidate), the KL of the plan to the dense model on the probe set,
and the wall time. Every KL a run needs — the calibration draw, γ = auto, the final plan's — is rated by the one
`KLProbe` built here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from .adapters import adapter_class_for, get_adapter
from .allocation import ROUND_TO, gamma_candidates, validate_hyperparameters
from .allocation.gamma import GAMMA_SEARCHES, choose_gamma, eligible_gammas, feasible_gammas, rate_gammas
from .calibration import (
    CalibrationConfig,
    Candidate,
    check_source,
    draw_candidates,
    lowest,
    per_sample_candidates,
    plan_stability,
)
from .models import skeleton
from .probe import HeldOut, HeldOutText, KLProbe
from .pruners import compute_plans, get_pruner
from .surgery.cut import apply_plan
from .surgery.plan import PruningPlan

log = logging.getLogger(__name__)

# How a run chooses γ among a list (pipeline options, never the pruner's own)
GAMMA_OPTIONS = ("gamma", "gamma_sparsity_slack", "gamma_search")


@dataclass
class PruneRecipe:
    """What to prune and how; `options` are the pruner's own (conf/pruner/<name>.yaml), γ among them."""

    pruner: str
    sparsity: float
    options: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None  # a named setting of the pruner ("matched"), shown as "<pruner>:<variant>" in rows
    calibration: CalibrationConfig | None = None  # None: a method that reads no calibration (magnitude, random)
    measure_kl: bool = False  # KL(dense ‖ pruned) of the final plan on the probe set
    score_cache: str | None = None  # folder of cached unit scores (nirvana.scoring.cache); None: off
    model_name: str | None = None  # recorded in the plan
    progress: bool = True  # progress bars (never part of a run's identity)
    # allocator=search: the evaluation text whose first windows report each generation's best (never used to choose)
    heldout: HeldOutText | None = None

    @property
    def gamma(self) -> float | None:
        return self.options.get("gamma")

    @property
    def searches(self) -> bool:
        """Whether the allocation is searched (nirvana.pruners.search): rated on the KL probe."""
        return get_pruner(self.pruner).searches(self.options)

    @classmethod
    def from_config(cls, config) -> PruneRecipe:
        """From a typed run or prune config (nirvana.config.RunConfig, PruneConfig)."""
        p = config.pruner
        return cls(pruner=p.name, variant=p.variant, sparsity=config.sparsity, options=p.options(),
                   calibration=config.calibration, measure_kl=config.measure_kl, score_cache=config.job.score_cache,
                   model_name=config.model.name, progress=config.job.progress)

    def row_columns(self, outcome: PruneOutcome) -> dict[str, Any]:
        """The result rows' pruning columns (nirvana.results.RUN_FIELDS) for this recipe's outcome."""
        calibrated = outcome.calibration_ids is not None
        record = outcome.calibration
        chosen = len(gamma_candidates(self.gamma)) > 1 if self.gamma is not None else False
        return {"pruner": method_name(self.pruner, self.variant), "sparsity": self.sparsity,
                "gamma": outcome.plan.gamma if chosen else self.gamma,  # gamma=auto: the γ the KL chose
                "calibration_source": record.get("source") if calibrated else None,
                "calibration_seed": record.get("seed") if calibrated else None,
                "calibration_selection": record.get("selection") if calibrated else None}


@dataclass
class PruneOutcome:
    plan: PruningPlan
    calibration_ids: torch.Tensor | None  # the exact batch the plan was computed from (replayable)
    calibration: dict[str, Any]  # how it was chosen: selection, source, seed, candidates with their KLs
    kl_probe: float | None  # the final plan's KL to the dense model on the probe set
    probe: dict[str, Any] | None  # the probe's identity (source, span, shape, token hash)
    seconds: float


def method_name(pruner: str, variant: str | None) -> str:
    """What rows call a pruner run: its name, with its variant when it has one (`wanda_sp:matched`)."""
    return f"{pruner}:{variant}" if variant else pruner


def _calibrated(recipe: PruneRecipe) -> bool:
    """Whether the run reads calibration text: to prune with, or to rate plans on the probe."""
    return (get_pruner(recipe.pruner).needs_calibration or recipe.measure_kl or recipe.searches
            or len(gamma_candidates(recipe.gamma if recipe.gamma is not None else 1.0)) > 1)


def check_recipe(recipe: PruneRecipe, config=None) -> None:
    """Every check that needs no weights, naming the bad value and what is accepted. With the model's config
    (`nirvana.models.read_config`) also: a supported architecture and pruner, calibration and probe windows
    within the model's context, a (sparsity, γ) the method can meet — checked on the model's skeleton."""
    method = get_pruner(recipe.pruner)
    gammas = gamma_candidates(recipe.gamma if recipe.gamma is not None else 1.0)
    for gamma in gammas:
        validate_hyperparameters(recipe.sparsity, gamma, recipe.options.get("round_to", ROUND_TO))
    slack = recipe.options.get("gamma_sparsity_slack")
    if slack is not None and (isinstance(slack, bool) or not isinstance(slack, int | float) or not 0 <= slack < 1):
        raise ValueError(f"gamma_sparsity_slack must be null or a number in [0, 1), got {slack!r}")
    if (recipe.options.get("gamma_search") or "grid") not in GAMMA_SEARCHES:
        raise ValueError(f"gamma_search must be one of {GAMMA_SEARCHES}, got {recipe.options.get('gamma_search')!r}")
    c = recipe.calibration
    choosing_gamma = len(gammas) > 1
    if choosing_gamma and not method.chooses_gamma(recipe.options):
        raise ValueError(f"gamma={recipe.gamma!r} chooses the γ of NIRVANA's global allocation by KL; pruner "
                         f"{recipe.pruner!r} with allocator {recipe.options.get('allocator')!r} takes one γ")
    if _calibrated(recipe):
        if c is None:
            raise ValueError(f"pruner {recipe.pruner!r} (or a KL on the probe) needs a calibration config")
        if choosing_gamma and c.source == "tensor":
            raise ValueError(f"gamma={recipe.gamma!r} judges each γ on the KL probe, which is cut from a text "
                             f"source; calibration.source=tensor has none")
        if recipe.searches and c.source == "tensor":
            raise ValueError("allocator=search rates each candidate on the KL probe, which is cut from a text source; "
                             "calibration.source=tensor has none")
        if recipe.searches and c.selection != "none":
            raise ValueError(f"allocator=search with calibration.selection={c.selection!r} would run one search per "
                             f"calibration draw; choose the draw first (e.g. recipe=nirvana_kl) and search from it "
                             f"with calibration.seed=<its seed>")
        check_source(c)
    if config is None:
        return
    adapter = adapter_class_for(config.model_type)(skeleton(config))  # lists the supported types
    if recipe.pruner in adapter.unsupported_pruners:
        raise ValueError(f"pruner {recipe.pruner!r} does not apply to {config.model_type} models "
                         f"({type(adapter).__name__})")
    context = adapter.max_context()
    if _calibrated(recipe) and context is not None:
        lengths = {"calibration.seq_len": c.seq_len}
        if recipe.measure_kl or choosing_gamma or c.selection != "none":
            lengths["calibration.probe.seq_len"] = c.probe.seq_len
        for key, length in lengths.items():
            if length > context:
                raise ValueError(f"{key}={length} exceeds the model's context of {context} tokens")
    layers = adapter.layers()
    if choosing_gamma:
        if not feasible_gammas(layers, recipe.sparsity, gammas):
            raise ValueError(f"sparsity {recipe.sparsity}: no γ among {gammas} lets the global allocation meet it "
                             f"(each γ's limit: largest_feasible_sparsity); lower the sparsity or add γ values near 1")
    else:
        method.check(layers, recipe.sparsity, gammas[0], recipe.options)


def prune(model: torch.nn.Module, tokenizer, recipe: PruneRecipe, apply: bool = True) -> PruneOutcome:
    """Choose the calibration (KL selection if asked), plan, measure the plan's KL, and cut the model in
    place (`apply=False` leaves it dense). The plan records the recipe's calibration and how it was chosen.

    `gamma=auto` (or a list of γ): every calibration candidate is scored once and planned at each feasible γ;
    the plan with the lowest KL to the dense model on the fixed probe wins, so K calibration draws × G values of
    γ cost K scoring passes and K·G probe forwards (coarse to fine, `gamma_search=coarse`: fewer). The plan records
    every rated γ's KL (`extra.gamma_choice`). `allocator=search`: the allocation is searched from the method's own
    plan on the same probe (nirvana.pruners.search; its trace in `extra.search`)."""
    check_recipe(recipe)
    t0 = time.perf_counter()
    method, c = get_pruner(recipe.pruner), recipe.calibration
    options = {k: v for k, v in recipe.options.items() if k not in GAMMA_OPTIONS}
    slack, gamma_search = recipe.options.get("gamma_sparsity_slack"), recipe.options.get("gamma_search") or "grid"
    gammas = asked = gamma_candidates(recipe.gamma if recipe.gamma is not None else 1.0)
    skipped: list[float] = []
    if len(gammas) > 1:
        feasible = feasible_gammas(get_adapter(model).layers(), recipe.sparsity, gammas)
        skipped, gammas = [g for g in gammas if g not in feasible], feasible
        if skipped:
            log.warning("γ %s cannot meet sparsity %s with the global allocation: not tried", skipped, recipe.sparsity)
    # The one probe every KL of this run is rated on. A plan rated once is not rated again (the chosen draw's
    # plan, the final plan); with the score cache on, not in a later run either (an interrupted selection resumes).
    selecting = c is not None and c.selection != "none"
    probe = None
    if (len(gammas) > 1 or selecting or recipe.measure_kl or recipe.searches) and c is not None \
            and c.source != "tensor":
        probe = KLProbe.build(model, tokenizer, c, recipe.score_cache)
    recorded_probe = probe if probe is not None and (selecting or recipe.measure_kl) else None
    heldout = HeldOut.build(recipe.heldout, tokenizer) if recipe.searches and recipe.heldout is not None else None

    def plan_for(ids, extra=None) -> PruningPlan:
        plans = compute_plans(model, ids, recipe.pruner, recipe.sparsity, gammas, model_name=recipe.model_name,
                              extra=extra, score_cache=recipe.score_cache, progress=recipe.progress, probe=probe,
                              heldout=heldout, **options)
        if len(plans) == 1:
            return plans[0]
        eligible = eligible_gammas(plans, recipe.sparsity, slack)  # known from the plans, before any rating
        kls = rate_gammas(gammas, eligible, lambda idx: probe.rate([plans[i] for i in idx]), gamma_search)
        return choose_gamma(plans, kls, gammas, asked, recipe.sparsity, slack, skipped, gamma_search)

    ids, record = None, {"selection": "none", "source": None, "seed": None}
    if method.needs_calibration:
        ids, record = choose_calibration(c, tokenizer, plan_for, probe, recorded_probe, recipe.progress)
    plan = plan_for(ids, {"calibration": _plain(c), "calibration_choice": record, "variant": recipe.variant,
                          "calibration_shape": list(ids.shape) if ids is not None else None})
    kl = probe.rate([plan])[0] if recorded_probe is not None else None
    if apply:
        apply_plan(model, plan)
    seconds = time.perf_counter() - t0
    log.info("%s (%.0f s)", plan.summary(), seconds)
    return PruneOutcome(plan, ids, record, kl, recorded_probe.record if recorded_probe is not None else None, seconds)


def choose_calibration(c: CalibrationConfig, tokenizer, plan_for, probe: KLProbe | None,
                       recorded_probe: KLProbe | None, progress: bool = True) -> tuple[torch.Tensor, dict]:
    """(the calibration batch to prune with, how it was chosen). selection=none: the official draw at `c.seed`;
    kl: the candidate set whose plan has the lowest KL on the probe; kl_per_sample: the `c.n_samples` single
    windows whose plans, each made from that window alone, have the lowest KL (one scoring pass per window)."""
    pool = draw_candidates(c, tokenizer)
    if c.source == "tensor":
        return pool[0].ids, {"selection": "none", "source": "tensor"}
    record = {"selection": c.selection, "probe": recorded_probe.record if recorded_probe is not None else None}
    if c.selection == "none":
        return pool[0].ids, {**record, "source": c.source, "seed": c.seed}
    if c.selection == "kl":
        _rate(pool, plan_for, probe, "KL selection", progress)
        best = lowest(pool)
        for cand in pool:
            log.info("calibration candidate %s: KL %.5f%s", cand.label, cand.kl, " ← chosen" if cand is pool[best] else "")
        record.update(candidates=[cand.record() for cand in pool], chosen=pool[best].label,
                      source=pool[best].source, seed=pool[best].seed,
                      stability=plan_stability([cand.plan for cand in pool]))
        return pool[best].ids, record
    singles = per_sample_candidates(pool)
    if len(singles) < c.n_samples:
        raise ValueError(f"kl_per_sample needs ≥ {c.n_samples} distinct candidate windows, the pool has {len(singles)}")
    _rate(singles, plan_for, probe, "KL per sample", progress)
    best = sorted(range(len(singles)), key=lambda i: singles[i].kl)[: c.n_samples]
    record.update(candidates=[s.record() for s in singles], chosen=[singles[i].label for i in best],
                  source=c.source, seed=c.seed)
    return torch.cat([singles[i].ids for i in best]), record


def _rate(candidates: list[Candidate], plan_for, probe: KLProbe, desc: str, progress: bool) -> None:
    """Plan every candidate (one scoring pass each), then rate all plans in ONE probe pass: the probe's dense
    forward is shared by the K candidates."""
    for cand in tqdm(candidates, desc=desc, disable=not progress):
        cand.plan = plan_for(cand.ids)
    for cand, kl in zip(candidates, probe.rate([cand.plan for cand in candidates]), strict=True):
        cand.kl = kl


def _plain(c: CalibrationConfig | None) -> dict | None:
    """The calibration config as the plan's JSON records it."""
    return asdict(c) if c is not None else None
