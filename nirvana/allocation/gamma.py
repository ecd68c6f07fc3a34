"""γ, NIRVANA's split of the budget between attention and MLP: the candidates a run may try, which can meet its
sparsity, and the choice among their plans by KL on the probe (beyond the paper, docs/method.md §2)."""

from __future__ import annotations

import logging
import math

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


def choose_gamma(plans: list[PruningPlan], kls: list[float], gammas: list[float], asked: list[float],
                 sparsity: float, slack: float | None, infeasible: list[float]) -> PruningPlan:
    """The plan of the γ with the lowest KL among the eligible ones (`gammas[i]` made `plans[i]`, rated `kls[i]`),
    recording every candidate's KL in its `extra.gamma_choice`; warns when the choice sits at an end of the grid
    `asked`, where a wider grid might go further."""
    best = min(eligible_gammas(plans, sparsity, slack), key=kls.__getitem__)
    for g, kl in zip(gammas, kls, strict=True):
        log.info("γ candidate %g: KL %.5f%s", g, kl, " ← chosen" if g == gammas[best] else "")
    edge = grid_edge(asked, gammas[best])
    if edge:
        log.warning("γ %g is the %s value asked for: the KL may fall further beyond it; a wider list (gamma=[...]) "
                    "would tell", gammas[best], edge)
    plan = plans[best]
    plan.extra["gamma_choice"] = {"chosen": gammas[best], "edge": edge, "infeasible": infeasible, "slack": slack,
                                  "candidates": [{"gamma": g, "kl": kl, "achieved": p.achieved_sparsity}
                                                 for g, kl, p in zip(gammas, kls, plans, strict=True)]}
    return plan
