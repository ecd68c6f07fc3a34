"""`allocator: search` for any method whose units have scores: the evolutionary search of nirvana.allocation.search,
started from the method's own plan, each candidate rated by its KL on the run's probe (nirvana.probe.KLProbe) and,
for a method with bias compensation, compensated as the method does it (FLAP; `bias_compensation=true`).

    plan = searched_plan(model, scores, start_plan, SearchConfig(), probe, heldout=None, bias=None)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..adapters import get_adapter
from ..allocation.search import Kept, SearchConfig, SearchSpace, search_allocation, search_key
from ..probe import HeldOut, KLProbe
from ..probe.kl import memo_probe_key
from ..scoring.units import UnitScores
from ..surgery.cut import cut_copy
from ..surgery.plan import PruningPlan
from .base import make_plan

SEARCH = "search"
Bias = Callable[[Kept], dict | None]  # kept units → the compensation biases of that plan (None: no compensation)


def search_config(value) -> SearchConfig:
    """The `search` option as a SearchConfig (a config object, a plain dict, or None: the defaults)."""
    if value is None:
        return SearchConfig()
    if isinstance(value, SearchConfig):
        return value
    if isinstance(value, dict):
        return SearchConfig(**value)
    raise TypeError(f"pruner.search must be a SearchConfig, a dict or null, got {type(value).__name__}")


def searched_plan(model: torch.nn.Module, scores: UnitScores, start: PruningPlan, config: SearchConfig,
                  probe: KLProbe | None, heldout: HeldOut | None = None, bias: Bias | None = None,
                  state_dir: str | Path | None = None, progress: bool = True) -> PruningPlan:
    """The plan of the best allocation the search finds from `start` (a plan of this model, its units ranked by
    `scores`), removing exactly `start`'s number of attention + MLP weights. With `state_dir` (the score cache) the
    search's state is saved there after every generation and a rerun resumes it."""
    if probe is None:
        raise ValueError("allocator=search rates each candidate on the KL probe: the run needs a calibration text "
                         "source (not calibration.source=tensor)")
    layers = get_adapter(model).layers()
    round_to = int(start.extra.get("round_to", 1))
    space = SearchSpace(layers, scores, [(list(a), list(m)) for a, m in start.kept_units()], round_to,
                        config.mlp_step, config.exchange)

    def plan_of(kept: Kept, extra: dict | None = None) -> PruningPlan:
        return make_plan(model, layers, kept, start.sparsity, start.gamma, start.pruner, SEARCH, start.model,
                         extra, output_bias=bias(kept) if bias is not None else None)

    def rate(candidates: list[Kept], windows: int) -> list[float]:
        return probe.rate([plan_of(kept) for kept in candidates], windows)

    def report(kept: Kept) -> dict:  # never used for selection (docs/method.md)
        nll = heldout.nll(cut_copy(model, plan_of(kept)))
        return {"nll": nll, "ppl": math.exp(nll)}

    state = None
    if state_dir is not None:
        context = {"model": probe.model_key, "probe": memo_probe_key(probe.windows.ids, probe.batch_size,
                                                                     probe.reference),
                   "pruner": start.pruner, "compensated": bias is not None}
        state = Path(state_dir) / f"search_{search_key(config, space, context)}.json"
    kept, record = search_allocation(space, config, rate, report if heldout is not None else None,
                                     lambda: dataclasses.asdict(probe.counts), state, progress)
    record["probe"] = probe.record
    if heldout is not None:
        record["heldout"] = heldout.record
    record["start_plan"] = {"allocator": start.allocator, "decision": start.decision_hash(),
                            "achieved_sparsity": start.achieved_sparsity}
    extra = {k: v for k, v in start.extra.items() if k != "search"}
    return plan_of(kept, {**extra, "search": record})
