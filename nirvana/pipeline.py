"""The one pruning path every entry point uses: calibrate → score → allocate → (KL probe) → cut.

    recipe = PruneRecipe("nirvana", sparsity=0.2, options={"gamma": 3.36}, calibration={"source": "lambada_tail"})
    check_recipe(recipe)                        # cheap: bad names and values fail before any model is loaded
    outcome = prune(model, tokenizer, recipe)   # the model is cut in place; outcome.plan says how

Everything here is plain Python values (no Hydra): `experiments/*` turn their configs into a `PruneRecipe`,
notebooks build one by hand. The outcome carries what result rows and plans record: the calibration actually
used and how it was chosen (with each KL candidate), the KL of the plan to the dense model on the probe set,
and the wall time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .adapters import adapter_class_for, get_adapter
from .allocation import (
    check_feasible,
    gamma_candidates,
    grid_edge,
    largest_feasible_sparsity,
    layer_range_mask,
    uniform_fractions,
    validate_hyperparameters,
)
from .calibration import (
    PROBE_KEYS,
    SELECTIONS,
    SOURCES,
    KLMemo,
    build_probe,
    check_source,
    choose_calibration,
    kl_to_dense,
    kls_to_dense,
)
from .models import skeleton
from .plan import PruningPlan
from .pruning import CALIBRATION_FREE, PRUNERS, compute_plans
from .score_cache import kl_memo_path
from .scoring import SCORERS
from .surgery import apply_plan

log = logging.getLogger(__name__)


@dataclass
class PruneRecipe:
    """What to prune and how; `options` are the pruner's own (conf/pruner/<name>.yaml), γ among them."""

    pruner: str
    sparsity: float
    options: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None  # a named setting of the pruner ("matched"), shown as "<pruner>:<variant>" in rows
    calibration: dict[str, Any] = field(default_factory=dict)  # nirvana.calibration.choose_calibration kwargs
    measure_kl: bool = False  # KL(dense ‖ pruned) of the final plan on the probe set
    score_cache: str | None = None  # folder of cached unit scores (nirvana.score_cache); None: off
    model_name: str | None = None  # recorded in the plan

    @property
    def gamma(self) -> float | None:
        return self.options.get("gamma")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PruneRecipe:
        """From a resolved run/prune config (conf/run.yaml, conf/prune.yaml) as a plain dict."""
        pruner = dict(config["pruner"])
        return cls(pruner=pruner.pop("name"), variant=pruner.pop("variant", None), sparsity=config["sparsity"],
                   options=pruner, calibration=dict(config["calibration"]),
                   measure_kl=bool(config.get("measure_kl", False)),
                   score_cache=(config.get("job") or {}).get("score_cache"), model_name=config["model"]["name"])

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


def check_recipe(recipe: PruneRecipe, config=None) -> None:
    """Every check that needs no weights, naming the bad value and what is accepted. With the model's config
    (`nirvana.models.read_config`) also: a supported architecture and pruner, calibration and probe windows
    within the model's context, a (sparsity, γ) the allocation can meet — checked on the model's skeleton."""
    if recipe.pruner not in PRUNERS:
        raise ValueError(f"unknown pruner {recipe.pruner!r}; choose one of {sorted(PRUNERS)}")
    gammas = gamma_candidates(recipe.gamma if recipe.gamma is not None else 1.0)
    for gamma in gammas:
        validate_hyperparameters(recipe.sparsity, gamma, recipe.options.get("round_to", 8))
    gamma = gammas[0]
    allocator = recipe.options.get("allocator")
    c = recipe.calibration
    choosing_gamma = len(gammas) > 1
    slack = recipe.options.get("gamma_sparsity_slack")
    if slack is not None and (isinstance(slack, bool) or not isinstance(slack, int | float) or not 0 <= slack < 1):
        raise ValueError(f"gamma_sparsity_slack must be null or a number in [0, 1), got {slack!r}")
    if choosing_gamma:
        if recipe.pruner not in SCORERS or allocator not in (None, "global"):
            raise ValueError(f"gamma={recipe.gamma!r} chooses the γ of NIRVANA's global allocation by KL; pruner "
                             f"{recipe.pruner!r} with allocator {allocator!r} takes one γ")
        if c.get("source") == "tensor":
            raise ValueError(f"gamma={recipe.gamma!r} judges each γ on the KL probe, which is cut from a text "
                             f"source; calibration.source=tensor has none")
    calibrated = recipe.pruner not in CALIBRATION_FREE or recipe.measure_kl or choosing_gamma
    if calibrated:
        if c.get("source") not in SOURCES:
            raise ValueError(f"unknown calibration source {c.get('source')!r}; choose one of {sorted(SOURCES)}")
        if c.get("selection", "none") not in SELECTIONS:
            raise ValueError(f"unknown calibration selection {c.get('selection')!r}; choose one of {SELECTIONS}")
        check_source(c)
    if config is None:
        return
    adapter_cls = adapter_class_for(config.model_type)  # lists the supported types
    if recipe.pruner in adapter_cls.unsupported_pruners:
        raise ValueError(f"pruner {recipe.pruner!r} does not apply to {config.model_type} models "
                         f"({adapter_cls.__name__})")
    context = getattr(config, "max_position_embeddings", None) if not config.is_encoder_decoder else None
    if calibrated and context is not None:
        lengths = {"calibration.seq_len": c.get("seq_len", 128)}
        if recipe.measure_kl or choosing_gamma or c.get("selection", "none") != "none":
            lengths["calibration.probe.seq_len"] = (c.get("probe") or {}).get("seq_len", 64)
        for key, length in lengths.items():
            if length > context:
                raise ValueError(f"{key}={length} exceeds the model's context of {context} tokens")
    layers = adapter_cls(skeleton(config)).layers()
    if choosing_gamma:
        if not feasible_gammas(layers, recipe.sparsity, gammas):
            raise ValueError(f"sparsity {recipe.sparsity}: no γ among {gammas} lets the global allocation meet it "
                             f"(each γ's limit: largest_feasible_sparsity); lower the sparsity or add γ values near 1")
    elif recipe.pruner in SCORERS and allocator in (None, "global"):
        check_feasible(layers, recipe.sparsity, gamma)
    elif allocator == "uniform" or recipe.pruner == "wanda_sp":
        o = recipe.options
        in_range = layer_range_mask(len(layers), o.get("layer_start", 0), o.get("layer_end"))
        uniform_fractions(layers, recipe.sparsity, gamma, in_range, o.get("ratio", "matched"))


def eligible_gammas(plans: list[PruningPlan], sparsity: float, slack: float | None) -> list[int]:
    """Which γ candidates' plans may win the KL choice: all (slack None), else those removing at least
    sparsity − slack — a plan that removes less has a lower KL for that reason alone (the keep-one-group guard
    can leave part of a γ's attention budget unspent). None within the slack: the ones that remove the most."""
    if slack is None:
        return list(range(len(plans)))
    within = [i for i, p in enumerate(plans) if p.achieved_sparsity >= sparsity - slack]
    most = max(p.achieved_sparsity for p in plans)
    return within or [i for i, p in enumerate(plans) if p.achieved_sparsity == most]


def feasible_gammas(layers, sparsity: float, gammas: list[float]) -> list[float]:
    """The candidates whose global allocation can meet `sparsity` (large γ cannot at high sparsity)."""
    return [g for g in gammas if sparsity < largest_feasible_sparsity(layers, g)]


def prune(model: torch.nn.Module, tokenizer, recipe: PruneRecipe, apply: bool = True) -> PruneOutcome:
    """Choose the calibration (KL selection if asked), plan, measure the plan's KL, and cut the model in
    place (`apply=False` leaves it dense). The plan records the recipe's calibration and how it was chosen.

    `gamma=auto` (or a list of γ): every calibration candidate is scored once and planned at each feasible γ;
    the plan with the lowest KL to the dense model on the fixed probe wins, so K calibration draws × G values of
    γ cost K scoring passes and K·G probe forwards. The plan records every γ's KL (`extra.gamma_choice`)."""
    check_recipe(recipe)
    t0 = time.perf_counter()
    options = {k: v for k, v in recipe.options.items() if k not in ("gamma", "gamma_sparsity_slack")}
    slack = recipe.options.get("gamma_sparsity_slack")
    gammas = asked = gamma_candidates(recipe.gamma if recipe.gamma is not None else 1.0)
    c = dict(recipe.calibration)
    probe_cfg = {k: v for k, v in (c.get("probe") or {}).items() if k in PROBE_KEYS}
    hub = {k: c[k] for k in ("hf_name", "hf_config", "split") if k in c}
    batch_size = (c.get("probe") or {}).get("batch_size", 16)
    skipped: list[float] = []
    if len(gammas) > 1:
        feasible = feasible_gammas(get_adapter(model).layers(), recipe.sparsity, gammas)
        skipped, gammas = [g for g in gammas if g not in feasible], feasible
        if skipped:
            log.warning("γ %s cannot meet sparsity %s with the global allocation: not tried", skipped, recipe.sparsity)
    gamma_probe: list = []  # built on first use: the same fixed probe every run of this source uses
    # a plan rated once on a probe is not rated again (the chosen draw's plan, the final plan); with the score
    # cache on, not in a later run either (an interrupted selection resumes)
    rates = len(gammas) > 1 or c.get("selection", "none") != "none" or recipe.measure_kl
    memo = KLMemo(kl_memo_path(recipe.score_cache, model) if recipe.score_cache and rates else None)

    def plan_for(ids, extra=None) -> PruningPlan:
        plans = compute_plans(model, ids, recipe.pruner, recipe.sparsity, gammas, model_name=recipe.model_name,
                              extra=extra, score_cache=recipe.score_cache, **options)
        if len(plans) == 1:
            return plans[0]
        if not gamma_probe:
            source = (c.get("candidate_sources") or [c["source"]])[0]
            gamma_probe.append(build_probe(source, tokenizer, path=c.get("path"), field=c.get("field", "text"),
                                           **probe_cfg, **hub))
        kls = kls_to_dense(model, plans, gamma_probe[0].ids, batch_size, memo)  # one dense pass shared by every γ
        best = min(eligible_gammas(plans, recipe.sparsity, slack), key=kls.__getitem__)
        for g, kl in zip(gammas, kls, strict=True):
            log.info("γ candidate %g: KL %.5f%s", g, kl, " ← chosen" if g == gammas[best] else "")
        plan = plans[best]
        edge = grid_edge(asked, gammas[best])
        if edge:
            log.warning("γ %g is the %s value asked for: the KL may fall further beyond it; a wider list "
                        "(gamma=[...]) would tell", gammas[best], edge)
        plan.extra["gamma_choice"] = {"chosen": gammas[best], "edge": edge, "infeasible": skipped, "slack": slack,
                                      "candidates": [{"gamma": g, "kl": kl, "achieved": p.achieved_sparsity}
                                                     for g, kl, p in zip(gammas, kls, plans, strict=True)]}
        return plan

    ids, record, probe = None, {"selection": "none", "source": None, "seed": None}, None
    if recipe.pruner not in CALIBRATION_FREE:
        choice = choose_calibration(model, tokenizer, plan_for, want_probe=recipe.measure_kl, kl_memo=memo, **c)
        ids, record, probe = choice.ids, choice.record, choice.probe
    elif recipe.measure_kl and c.get("source") != "tensor":  # no calibration, but the same probe as every run
        probe = build_probe(c["source"], tokenizer, path=c.get("path"), field=c.get("field", "text"), **probe_cfg,
                            **hub)
    plan = plan_for(ids, {"calibration": c, "calibration_choice": record, "variant": recipe.variant,
                          "calibration_shape": list(ids.shape) if ids is not None else None})
    for cand in record.get("candidates") or []:
        if record["selection"] == "kl":
            mark = " ← chosen" if cand["label"] == record["chosen"] else ""
            log.info("calibration candidate %s: KL %.5f%s", cand["label"], cand["kl"], mark)
    kl = None
    if probe is not None:
        kl = kl_to_dense(model, plan, probe.ids, batch_size, memo)
    if apply:
        apply_plan(model, plan)
    seconds = time.perf_counter() - t0
    log.info("%s (%.0f s)", plan.summary(), seconds)
    return PruneOutcome(plan, ids, record, kl, probe.record if probe is not None else None, seconds)
