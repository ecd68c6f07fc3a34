"""Surgery: physically remove the units a plan drops, through the adapter.

Each prunable parameter is replaced by `index_select` of its kept blocks (rows of q/k/v/gate/up, columns of
o/down), so the pruned model is an ordinary, smaller dense model: no masks, real speed-ups. The config's
`per_layer_config` is updated to the new widths, so the model describes itself truthfully (and saves so).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..adapters import MODULE_KINDS, ModelAdapter, get_adapter
from .plan import PruningPlan


class _KnownHeterogeneousAccess(logging.Filter):
    """Drop transformers' warning about reading global widths from a per-layer config: this code builds each
    layer from its own entry, so the global values it reads are only the starting shapes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "per-layer attribute" not in record.getMessage()


logging.getLogger("transformers.integrations.heterogeneity.configuration_utils").addFilter(
    _KnownHeterogeneousAccess()
)


def _sync_module_shape(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape


def check_plan_fits(plan: PruningPlan, adapter: ModelAdapter) -> None:
    layers = adapter.layers()
    if len(plan.layers) != len(layers):
        raise ValueError(f"plan has {len(plan.layers)} layers, model has {len(layers)}")
    for lp, layer in zip(plan.layers, layers):
        for kind, kept, n_plan, n_model in (
            ("attention", lp.kept_groups, lp.n_groups, layer.attention.n_units),
            ("mlp", lp.kept_neurons, lp.n_neurons, layer.mlp.n_units),
        ):
            if n_plan != n_model:
                raise ValueError(
                    f"layer {lp.index} {kind}: plan is for {n_plan} dense units but the model has {n_model} "
                    "(plans apply to the dense model)"
                )
            if not kept:
                raise ValueError(f"layer {lp.index} {kind}: plan keeps no unit")
            if kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= n_model:
                raise ValueError(f"layer {lp.index} {kind}: kept indices must be sorted, unique, in [0, {n_model})")
            for a, b in layer.group(kind).parts():
                if not any(a <= u < b for u in kept):
                    raise ValueError(f"layer {lp.index} {kind}: plan keeps no unit of its module with units [{a}, {b})")


@torch.no_grad()
def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Prune `model` in place to `plan` and return it."""
    adapter = get_adapter(model)
    check_plan_fits(plan, adapter)
    for lp, layer in zip(plan.layers, adapter.layers()):
        for kind in MODULE_KINDS:
            group = layer.group(kind)
            kept = lp.kept_groups if kind == "attention" else lp.kept_neurons
            if len(kept) == group.n_units:
                continue
            adapter.before_cut(group, kept)
            for s in group.slices:
                old = s.param
                index = s.element_index(s.local(kept, group.n_units), old.device)
                new = nn.Parameter(old.index_select(s.dim, index).contiguous(), requires_grad=old.requires_grad)
                setattr(s.module, s.param_name, new)
                _sync_module_shape(s.module)
        adapter.after_surgery(layer)
    if plan.output_bias:
        add_output_biases(adapter, plan.output_bias)
    adapter.record_layer_widths()
    return model


def cut_copy(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A copy of `model` cut to `plan` that shares every tensor the cut leaves alone (embeddings, norms, head, the
    units' parent modules' other weights): it costs only the kept slices (`cut_copy_bytes`), and `model` stays
    dense. Its logits are the masked model's (nirvana.surgery.masking) up to float summation order, at the pruned cost."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return apply_plan(copy.deepcopy(model, memo=shared), plan)  # surgery replaces tensors, never writes into them


def cut_copy_bytes(model: nn.Module, plan: PruningPlan) -> int:
    """Memory `cut_copy(model, plan)` adds: the kept attention/MLP parameters (and compensation biases), at the
    model's element size — an upper bound (a layer the plan leaves whole is shared, not copied)."""
    kept = plan.params_after - (plan.params_before - plan.prunable_params)
    return kept * next(model.parameters()).element_size()


def add_output_biases(adapter: ModelAdapter, biases: dict[int, dict[str, torch.Tensor]]) -> None:
    """FLAP's bias compensation: every layer's o_proj and down_proj get a bias (zero where nothing was
    removed), and the config says so, so the checkpoint's modeling code creates them on load."""
    for layer in adapter.layers():
        for kind in MODULE_KINDS:
            linear = layer.group(kind).output_projection().module
            b = biases.get(layer.index, {}).get(kind)
            new = torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device)
            if linear.bias is not None:
                new += linear.bias
            if b is not None:
                new += b.to(new)
            linear.bias = nn.Parameter(new, requires_grad=linear.weight.requires_grad)
    adapter.config.nirvana_output_bias = True


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once, as `model.num_parameters()` does)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
