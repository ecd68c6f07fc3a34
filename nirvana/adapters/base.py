"""The adapter interface: where a model keeps its prunable units, and nothing else.

Scoring, allocation and surgery talk only to this interface (as SliceGPT's adapters do), so they never
spell out a model's attribute paths. A *unit* is the smallest thing we remove:
  - attention: one GQA group (a KV head and the query heads that read it), or one head without GQA;
  - mlp: one intermediate neuron.
A unit occupies a contiguous block of `block` indices along one dimension of each parameter it touches
(rows of q/k/v and gate/up, columns of o and down). `ParamSlice` records exactly that, so a generic routine
can score (sum |S| over the block) and cut (index_select the kept blocks) any architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

ATTENTION = "attention"
MLP = "mlp"
MODULE_KINDS = (ATTENTION, MLP)


@dataclass(frozen=True)
class ParamSlice:
    """Unit u of a group owns indices [u*block, (u+1)*block) along `dim` of `module.<param_name>`."""

    module: nn.Module
    param_name: str
    dim: int
    block: int

    @property
    def param(self) -> nn.Parameter:
        return getattr(self.module, self.param_name)


@dataclass
class UnitGroup:
    """All units of one kind (attention or mlp) in one layer, and the parameters they own."""

    kind: str
    layer: int
    n_units: int
    slices: list[ParamSlice] = field(default_factory=list)

    @property
    def unit_cost(self) -> int:
        """Parameters removed with one unit (weights and biases): the allocation's currency."""
        total = 0
        for s in self.slices:
            p = s.param
            total += p.numel() // p.shape[s.dim] * s.block
        return total

    def output_projection(self) -> ParamSlice:
        """The slice whose *input* channels are the units' outputs (o_proj / down_proj columns).

        Activation-statistics baselines (Wanda-sp, FLAP) measure these input channels, and FLAP's bias
        compensation adds a bias to this module.
        """
        for s in self.slices:
            if s.dim == 1 and s.param_name == "weight" and isinstance(s.module, nn.Linear):
                return s
        raise ValueError(f"layer {self.layer} {self.kind}: no output projection among the unit's parameters")

    def check(self) -> None:
        for s in self.slices:
            size = s.param.shape[s.dim]
            if size != self.n_units * s.block:
                raise ValueError(
                    f"layer {self.layer} {self.kind}: {type(s.module).__name__}.{s.param_name} has {size} "
                    f"entries along dim {s.dim}, expected {self.n_units} units x {s.block}"
                )


@dataclass
class LayerUnits:
    index: int
    attention: UnitGroup
    mlp: UnitGroup

    def group(self, kind: str) -> UnitGroup:
        return self.attention if kind == ATTENTION else self.mlp


class ModelAdapter:
    """Base class. Subclasses set `model_types` and implement the abstract methods."""

    model_types: tuple[str, ...] = ()

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # --- structure -------------------------------------------------------------------------------
    def layers(self) -> list[LayerUnits]:
        raise NotImplementedError

    def after_surgery(self, layer: LayerUnits) -> None:
        """Update module attributes that cache widths (e.g. `mlp.intermediate_size`). Default: nothing."""

    def per_layer_overrides(self) -> dict[int, dict[str, int]]:
        """Config attributes of each layer as the model stands now (recorded in `per_layer_config`)."""
        raise NotImplementedError

    def checkpoint_class_name(self) -> str:
        """Class in nirvana/checkpoint_code/modeling_nirvana.py that `auto_map` points to."""
        raise NotImplementedError

    # --- calibration forward ---------------------------------------------------------------------
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] on a calibration batch; the scorers' only way to run the model."""
        raise NotImplementedError

    def max_context(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)

    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    # --- helpers ---------------------------------------------------------------------------------
    def prunable_parameters(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for layer in self.layers():
            for kind in MODULE_KINDS:
                for s in layer.group(kind).slices:
                    seen.setdefault(id(s.param), s.param)
        return list(seen.values())

    def describe(self) -> str:
        layers = self.layers()
        a = [layer.attention.n_units for layer in layers]
        m = [layer.mlp.n_units for layer in layers]
        return (
            f"{type(self).__name__}: {len(layers)} layers, attention units/layer {min(a)}..{max(a)}, "
            f"mlp units/layer {min(m)}..{max(m)}"
        )
