"""Methods whose allocation is part of the method, computed in one layer-wise pass of activation statistics:
Wanda-sp (a uniform ratio, layers pruned as they go) and FLAP (one standardized pool, bias compensation). Both read
the inputs of each block's output projections, so they apply to decoder blocks only (an adapter says which
methods it cannot run: `ModelAdapter.unsupported_pruners`)."""

from __future__ import annotations

from ..adapters import LayerUnits, get_adapter
from ..allocation import layer_range_mask, uniform_fractions
from ..baselines.flap import flap_plan
from ..baselines.wanda_sp import wanda_sp_plan
from ..scoring.statistics import layerwise_channel_stats
from ..surgery.compensation import compensation_biases
from ..surgery.plan import PruningPlan
from .base import Pruner, make_plan, prepare_ids
from .config import WANDA_SP_NOT_SEARCHABLE
from .search import search_config, searched_plan


class WandaSpPruner(Pruner):
    name = "wanda_sp"

    def check(self, layers: list[LayerUnits], sparsity: float, gamma: float, options: dict) -> None:
        in_range = layer_range_mask(len(layers), options.get("layer_start", 0), options.get("layer_end"))
        uniform_fractions(layers, sparsity, gamma, in_range, options.get("ratio", "literal"))

    def plans(self, model, input_ids, sparsity, gammas, options, model_name=None, extra=None, score_cache=None,
              progress=True, probe=None, heldout=None) -> list[PruningPlan]:
        if self.searches(options):
            raise ValueError(f"pruner=wanda_sp with allocator=search: {WANDA_SP_NOT_SEARCHABLE}")
        options = {k: v for k, v in options.items() if k not in ("allocator", "search")}
        adapter = get_adapter(model)
        kept, scores = wanda_sp_plan(adapter, prepare_ids(model, adapter, input_ids, self), sparsity, gammas[0],
                                     progress=progress, **options)
        scores.check_finite(self.name)
        return [make_plan(model, adapter.layers(), kept, sparsity, gammas[0], self.name, "uniform", model_name,
                          {**options, **(extra or {})})]


class FlapPruner(Pruner):
    name = "flap"

    def plans(self, model, input_ids, sparsity, gammas, options, model_name=None, extra=None, score_cache=None,
              progress=True, probe=None, heldout=None) -> list[PruningPlan]:
        """FLAP's plan; `allocator="search"`: the searched allocation from it (nirvana.pruners.search), units ranked
        by FLAP's standardized metric within each layer and module (the order standardizing does not change), every
        candidate compensated from the same statistics of the unpruned model as FLAP's own plan."""
        adapter = get_adapter(model)
        search = search_config(options.get("search")) if self.searches(options) else None
        options = {k: v for k, v in options.items() if k not in ("allocator", "search")}
        ids = prepare_ids(model, adapter, input_ids, self)
        stats = layerwise_channel_stats(adapter, ids, batch_size=options.get("batch_size", 8), progress=progress)
        kept, scores, bias = flap_plan(adapter, ids, sparsity, progress=progress, stats=stats, **options)
        scores.check_finite(self.name)
        plan = make_plan(model, adapter.layers(), kept, sparsity, gammas[0], self.name, "standardized_global",
                         model_name, {**options, **(extra or {})}, output_bias=bias)
        if search is None:
            return [plan]
        layers = adapter.layers()
        compensate = (lambda k: compensation_biases(layers, k, stats)) if options.get("bias_compensation", True) \
            else None
        return [searched_plan(model, scores, plan, search, probe, heldout, compensate, score_cache, progress)]
