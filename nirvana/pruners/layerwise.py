"""Methods whose allocation is part of the method, computed in one layer-wise pass of activation statistics:
Wanda-sp (a uniform ratio, layers pruned as they go) and FLAP (one standardized pool, bias compensation). Both read
the inputs of each block's output projections, so they apply to decoder blocks only (an adapter says which
methods it cannot run: `ModelAdapter.unsupported_pruners`)."""

from __future__ import annotations

from ..adapters import LayerUnits, get_adapter
from ..allocation import layer_range_mask, uniform_fractions
from ..baselines.flap import flap_plan
from ..baselines.wanda_sp import wanda_sp_plan
from ..surgery.plan import PruningPlan
from .base import Pruner, make_plan, prepare_ids


class WandaSpPruner(Pruner):
    name = "wanda_sp"

    def check(self, layers: list[LayerUnits], sparsity: float, gamma: float, options: dict) -> None:
        in_range = layer_range_mask(len(layers), options.get("layer_start", 0), options.get("layer_end"))
        uniform_fractions(layers, sparsity, gamma, in_range, options.get("ratio", "literal"))

    def plans(self, model, input_ids, sparsity, gammas, options, model_name=None, extra=None, score_cache=None,
              progress=True) -> list[PruningPlan]:
        adapter = get_adapter(model)
        kept, scores = wanda_sp_plan(adapter, prepare_ids(model, adapter, input_ids, self), sparsity, gammas[0],
                                     progress=progress, **options)
        scores.check_finite(self.name)
        return [make_plan(model, adapter.layers(), kept, sparsity, gammas[0], self.name, "uniform", model_name,
                          {**options, **(extra or {})})]


class FlapPruner(Pruner):
    name = "flap"

    def plans(self, model, input_ids, sparsity, gammas, options, model_name=None, extra=None, score_cache=None,
              progress=True) -> list[PruningPlan]:
        adapter = get_adapter(model)
        kept, scores, bias = flap_plan(adapter, prepare_ids(model, adapter, input_ids, self), sparsity,
                                       progress=progress, **options)
        scores.check_finite(self.name)
        return [make_plan(model, adapter.layers(), kept, sparsity, gammas[0], self.name, "standardized_global",
                          model_name, {**options, **(extra or {})}, output_bias=bias)]
