"""γ, NIRVANA's split of the budget between attention and MLP: the candidates a run may try, which can meet its
sparsity, and the choice among their plans by KL on the probe (beyond the paper, docs/method.md §2)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from ..adapters import LayerUnits
from ..surgery.plan import PruningPlan
from .budget import largest_feasible_sparsity

log = logging.getLogger(__name__)

# γ of the paper's Llama-3.1-8B runs (3.0 for Llama-3.2-3B): the default of the run's γ and of every pruner that
# reads one from NIRVANA's global allocation.
OFFICIAL_GAMMA = 3.36

# `gamma=auto`: the candidates tried, each plan judged by its KL to the dense model on the fixed probe (beyond the
# paper, which hand-tunes γ per model: 3.36 for Llama-3.1-8B, 3.0 for Llama-3.2-3B). Below 1 prunes attention harder.
AUTO_GAMMAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.36, 4.0, 5.0)


def gamma_candidates(gamma) -> list[float]:
    """γ as a run gives it — a number, `auto` (AUTO_GAMMAS) or a list to choose from — as the list of candidates
    (one element: no choice to make). Each is validated."""
    if gamma == "auto":
        values = list(AUTO_GAMMAS)
    elif isinstance(gamma, list | tuple):
        values = list(gamma)
        if not values:
            raise ValueError("gamma: an empty list of candidates; give a number, a non-empty list or auto")
    else:
        values = [gamma]
    for g in values:
        if isinstance(g, bool) or not isinstance(g, int | float) or not g > 0 or math.isinf(g):
            raise ValueError(f"gamma must be a finite number > 0, a list of them, or auto; got {gamma!r}")
    return [float(g) for g in values]


def grid_edge(asked: list[float], chosen: float) -> str | None:
    """"largest" or "smallest" when the KL chose an end of a list of at least three γ, where the grid, not the KL,
    may have stopped the search (at 20 % on SmolLM2 `auto` chose its top value, 5.0); None inside the list."""
    if len(asked) < 3:  # two values: an end either way, and the list was the user's deliberate choice
        return None
    return "largest" if chosen == max(asked) else "smallest" if chosen == min(asked) else None


def feasible_gammas(layers: list[LayerUnits], sparsity: float, gammas: list[float]) -> list[float]:
    """The candidates whose global allocation can meet `sparsity` (large γ cannot at high sparsity)."""
    return [g for g in gammas if sparsity < largest_feasible_sparsity(layers, g)]


def eligible_gammas(plans: list[PruningPlan], sparsity: float, slack: float | None) -> list[int]:
    """Which γ candidates' plans may win the KL choice: all (slack None), else those removing at least
    sparsity − slack — a plan that removes less has a lower KL for that reason alone (the keep-one-group guard
    can leave part of a γ's attention budget unspent). None within the slack: the ones that remove the most."""
    if slack is None:
        return list(range(len(plans)))
    within = [i for i, p in enumerate(plans) if p.achieved_sparsity >= sparsity - slack]
    most = max(p.achieved_sparsity for p in plans)
    return within or [i for i, p in enumerate(plans) if p.achieved_sparsity == most]


# How `gamma=auto` (or a list) rates its candidates (`pruner.gamma_search`):
#   grid   — every candidate's plan (the published runs; the default);
#   coarse — coarse to fine: the COARSE_GAMMAS in the list (and its largest value), then, repeatedly, the unrated
#            neighbours of the best one so far, until the best has none: a descent on the grid from a coarse start.
#            Only candidates that may win (`eligible_gammas`, known from the plans before any rating) are rated.
GAMMA_SEARCHES = ("grid", "coarse")
# The coarse start on AUTO_GAMMAS: the ends of the useful range (γ = 0.5 never won a committed run: it is rated only if
# the descent reaches it), the official 3.36 and a point between. On every committed `gamma=auto` run (13: SmolLM2
# and Qwen2.5, docs/method.md §2) the descent from here ends on the grid's choice, after rating 5–7 of the 9 plans.
COARSE_GAMMAS = (1.0, 2.0, 3.36, 5.0)


def coarse_start(values: list[float]) -> list[float]:
    """The γ `coarse` rates first among `values` (the eligible candidates): the COARSE_GAMMAS among them and the
    largest; a list without any COARSE_GAMMAS (a user's own) starts from every other value counted down from its
    largest, and its smallest."""
    ordered = sorted(set(values))
    if not ordered:
        return []
    start = {g for g in ordered if g in COARSE_GAMMAS}
    if not start:
        start = set(ordered[::-1][::2]) | {ordered[0]}
    return sorted(start | {ordered[-1]})


def rate_gammas(gammas: list[float], eligible: list[int], rate: Callable[[list[int]], list[float]],
                search: str = "grid") -> list[float | None]:
    """Each candidate's KL (None: not rated) by `search` (GAMMA_SEARCHES); `rate(indices)` → their plans' KLs.
    `grid` rates every candidate in one call (their dense pass shared); `coarse` only the eligible ones, coarse to fine."""
    if search not in GAMMA_SEARCHES:
        raise ValueError(f"gamma_search must be one of {GAMMA_SEARCHES}, got {search!r}")
    kls: list[float | None] = [None] * len(gammas)
    if search == "grid":
        return list(rate(list(range(len(gammas)))))
    order = sorted(eligible, key=lambda i: gammas[i])  # the eligible candidates along the γ axis

    def rate_some(positions: set[int]) -> None:
        todo = sorted(order[p] for p in positions if kls[order[p]] is None)
        for i, kl in zip(todo, rate(todo) if todo else [], strict=True):
            kls[i] = kl

    start = set(coarse_start([gammas[i] for i in order]))
    rate_some({p for p, i in enumerate(order) if gammas[i] in start})
    while True:
        rated = [p for p, i in enumerate(order) if kls[i] is not None]
        best = min(rated, key=lambda p: kls[order[p]])
        neighbours = {p for p in (best - 1, best + 1) if 0 <= p < len(order) and kls[order[p]] is None}
        if not neighbours:
            return kls
        rate_some(neighbours)


def choose_gamma(plans: list[PruningPlan], kls: list[float | None], gammas: list[float], asked: list[float],
                 sparsity: float, slack: float | None, infeasible: list[float], search: str = "grid") -> PruningPlan:
    """The plan of the γ with the lowest KL among the eligible, rated ones (`gammas[i]` made `plans[i]`, rated
    `kls[i]`; None: not rated, `rate_gammas`), recording every rated candidate's KL in its `extra.gamma_choice` (and,
    coarse to fine, which were not rated); warns when the choice sits at an end of the grid `asked`, where a wider
    grid might go further."""
    best = min((i for i in eligible_gammas(plans, sparsity, slack) if kls[i] is not None), key=kls.__getitem__)
    for g, kl in zip(gammas, kls, strict=True):
        if kl is not None:
            log.info("γ candidate %g: KL %.5f%s", g, kl, " ← chosen" if g == gammas[best] else "")
    edge = grid_edge(asked, gammas[best])
    if edge:
        log.warning("γ %g is the %s value asked for: the KL may fall further beyond it; a wider list (gamma=[...]) "
                    "would tell", gammas[best], edge)
    plan = plans[best]
    plan.extra["gamma_choice"] = {"chosen": gammas[best], "edge": edge, "infeasible": infeasible, "slack": slack,
                                  "candidates": [{"gamma": g, "kl": kl, "achieved": p.achieved_sparsity}
                                                 for g, kl, p in zip(gammas, kls, plans, strict=True) if kl is not None]}
    if search != "grid":  # coarse to fine: which γ were never rated (each plan's achieved sparsity is known)
        plan.extra["gamma_choice"] |= {"search": search, "unrated": [
            {"gamma": g, "achieved": p.achieved_sparsity} for g, kl, p in zip(gammas, kls, plans, strict=True)
            if kl is None]}
    return plan
