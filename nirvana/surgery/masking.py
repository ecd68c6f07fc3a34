"""Masks: evaluate a plan on the dense model in memory, without copying or cutting it.

Zeroing a unit's rows (q/k/v, gate/up) and its output-projection columns (o, down) removes its contribution
exactly: the block's output is what the physically pruned model computes (up to float summation order).
The zeroed values are saved and restored on exit, so one dense model can try many plans (KL-based
calibration selection) and sequential baselines (Wanda-sp) can prune "as they go" and still return a plan.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..adapters import MODULE_KINDS, UnitGroup, get_adapter
from .plan import PruningPlan


class UnitMask:
    """Zero the pruned units of one UnitGroup in place; `restore()` puts the weights back."""

    def __init__(self, group: UnitGroup, kept: list[int]):
        self.saved: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []
        pruned = sorted(set(range(group.n_units)) - set(kept))
        if not pruned:
            return
        with torch.no_grad():
            for s in group.slices:
                p = s.param
                local = s.local(pruned, group.n_units)
                if not local:
                    continue
                index = s.element_index(local, p.device)
                self.saved.append((p, s.dim, index, p.index_select(s.dim, index).clone()))
                p.index_fill_(s.dim, index, 0.0)

    def restore(self) -> None:
        with torch.no_grad():
            for p, dim, index, values in self.saved:
                p.index_copy_(dim, index, values)
        self.saved = []


class OutputBias:
    """Temporarily give a Linear an output bias (FLAP's compensation) without changing its structure."""

    def __init__(self, linear: torch.nn.Linear, bias: torch.Tensor):
        self.linear, self.had = linear, linear.bias
        with torch.no_grad():
            if linear.bias is None:
                linear.bias = torch.nn.Parameter(bias.to(linear.weight), requires_grad=False)
            else:
                self.old = linear.bias.detach().clone()
                linear.bias.add_(bias.to(linear.bias))

    def restore(self) -> None:
        with torch.no_grad():
            if self.had is None:
                self.linear.bias = None
            else:
                self.linear.bias.copy_(self.old)


@contextlib.contextmanager
def masked(model: torch.nn.Module, plan: PruningPlan) -> Iterator[torch.nn.Module]:
    """`with masked(model, plan): ...` runs the dense model as if `plan` had been applied."""
    adapter = get_adapter(model)
    handles: list[UnitMask | OutputBias] = []
    try:
        for lp, layer in zip(plan.layers, adapter.layers()):
            for kind in MODULE_KINDS:
                group = layer.group(kind)
                handles.append(UnitMask(group, lp.kept_groups if kind == "attention" else lp.kept_neurons))
                bias = plan.output_bias.get(lp.index, {}).get(kind) if plan.output_bias else None
                if bias is not None:
                    handles.append(OutputBias(group.output_projection().module, bias))
        yield model
    finally:
        for h in reversed(handles):
            h.restore()
