"""The pruning plan: which units of the dense model survive, as a JSON file next to the checkpoint.

A plan is the whole decision: applying it to the dense model (nirvana.surgery.apply_plan) reproduces the
pruned model exactly, so plans can be compared, diffed and plotted without loading any weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..atomic import atomic_file, atomic_path

PLAN_FORMAT = "nirvana-plan/1"
PLAN_FILENAME = "pruning_plan.json"
BIAS_SUFFIX = ".bias.safetensors"  # FLAP's compensation biases live beside the JSON, as tensors


@dataclass
class LayerPlan:
    index: int
    kept_groups: list[int]
    kept_neurons: list[int]
    n_groups: int  # dense units, so a plan can be checked against a model before surgery
    n_neurons: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "attention": {"kept_groups": self.kept_groups, "n_groups": self.n_groups},
            "mlp": {"kept_neurons": self.kept_neurons, "n_neurons": self.n_neurons},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerPlan:
        return cls(
            index=int(d["index"]),
            kept_groups=[int(i) for i in d["attention"]["kept_groups"]],
            kept_neurons=[int(i) for i in d["mlp"]["kept_neurons"]],
            n_groups=int(d["attention"]["n_groups"]),
            n_neurons=int(d["mlp"]["n_neurons"]),
        )


@dataclass
class PruningPlan:
    model: str
    pruner: str
    sparsity: float
    gamma: float
    params_before: int
    params_after: int
    layers: list[LayerPlan]
    allocator: str = "global"
    group_cost: int = 0  # parameters per attention group / MLP neuron (for re-deriving counts)
    neuron_cost: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # provenance: calibration, scorer options, …
    # {layer index: {"attention"|"mlp": bias [hidden]}} added to o_proj/down_proj (FLAP); None for most pruners
    output_bias: dict[int, dict[str, Any]] | None = None

    # --- derived ----------------------------------------------------------------------------------
    @property
    def pruned_groups(self) -> int:
        return sum(layer.n_groups - len(layer.kept_groups) for layer in self.layers)

    @property
    def pruned_neurons(self) -> int:
        return sum(layer.n_neurons - len(layer.kept_neurons) for layer in self.layers)

    @property
    def kept_fraction(self) -> float:
        """Parameters kept, of the whole model (embeddings and head included)."""
        return self.params_after / self.params_before

    @property
    def prunable_params(self) -> int:
        """Attention + MLP parameters of the dense model: what `sparsity` is a fraction of."""
        return sum(lp.n_groups * self.group_cost + lp.n_neurons * self.neuron_cost for lp in self.layers)

    @property
    def achieved_sparsity(self) -> float:
        """The fraction of attention + MLP parameters actually removed (rounding, floors and guards make it
        differ from the requested `sparsity`; FLAP's compensation biases count as added parameters)."""
        return (self.params_before - self.params_after) / self.prunable_params

    def kept_iou(self, other: PruningPlan) -> dict[str, float]:
        """Stability of a decision across calibration draws: per module kind, |kept ∩ kept'| / |kept ∪ kept'| over
        (layer, unit) pairs (1.0: the same units kept; plans must be of the same model)."""
        if [(lp.index, lp.n_groups, lp.n_neurons) for lp in self.layers] != \
                [(lp.index, lp.n_groups, lp.n_neurons) for lp in other.layers]:
            raise ValueError("kept_iou compares plans of the same model (same layers and unit counts)")
        out = {}
        for kind, units in (("attention", lambda lp: lp.kept_groups), ("mlp", lambda lp: lp.kept_neurons)):
            a = {(lp.index, u) for lp in self.layers for u in units(lp)}
            b = {(lp.index, u) for lp in other.layers for u in units(lp)}
            out[kind] = len(a & b) / len(a | b) if a | b else 1.0
        return out

    def widths(self) -> dict[str, list[int]]:
        """Per layer, the kept and the dense numbers of attention groups and MLP neurons: what an allocation
        figure draws, small enough for a result row (the plan itself lists every unit)."""
        return {"kept_groups": [len(lp.kept_groups) for lp in self.layers], "n_groups": [lp.n_groups for lp in self.layers],
                "kept_neurons": [len(lp.kept_neurons) for lp in self.layers],
                "n_neurons": [lp.n_neurons for lp in self.layers]}

    def summary(self) -> str:
        return (
            f"{self.pruner} s={self.sparsity:g} γ={self.gamma:g} ({self.allocator}): pruned "
            f"{self.pruned_groups} attention groups, {self.pruned_neurons} MLP neurons; params "
            f"{self.params_before:,} → {self.params_after:,} ({100 * self.kept_fraction:.1f}% kept)"
        )

    # --- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {"format": PLAN_FORMAT}
        d.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("layers", "output_bias")})
        d["pruned_groups"] = self.pruned_groups
        d["pruned_neurons"] = self.pruned_neurons
        d["layers"] = [layer.to_dict() for layer in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruningPlan:
        if d.get("format") != PLAN_FORMAT:
            raise ValueError(f"not a NIRVANA plan (format {d.get('format')!r}, expected {PLAN_FORMAT!r})")
        return cls(
            model=d["model"],
            pruner=d["pruner"],
            sparsity=float(d["sparsity"]),
            gamma=float(d["gamma"]),
            params_before=int(d["params_before"]),
            params_after=int(d["params_after"]),
            layers=[LayerPlan.from_dict(x) for x in d["layers"]],
            allocator=d.get("allocator", "global"),
            group_cost=int(d.get("group_cost", 0)),
            neuron_cost=int(d.get("neuron_cost", 0)),
            extra=dict(d.get("extra", {})),
        )

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        if self.output_bias:
            from safetensors.torch import save_file

            d["output_bias_file"] = path.name + BIAS_SUFFIX
            tensors = {f"{i}.{kind}": b.detach().cpu().float().contiguous()
                       for i, kinds in self.output_bias.items() for kind, b in kinds.items()}
            with atomic_path(path.parent / d["output_bias_file"]) as tmp:  # before the JSON that names it
                save_file(tensors, str(tmp))
        with atomic_file(path) as f:  # an interrupted save never leaves a truncated plan behind
            json.dump(d, f, indent=1)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILENAME
        with open(path) as f:
            d = json.load(f)
        plan = cls.from_dict(d)
        if d.get("output_bias_file"):
            from safetensors.torch import load_file

            plan.output_bias = {}
            for key, t in load_file(str(path.parent / d["output_bias_file"])).items():
                i, kind = key.split(".")
                plan.output_bias.setdefault(int(i), {})[kind] = t
        return plan

    def kept_units(self) -> list[list[list[int]]]:
        """Per layer, [kept groups, kept neurons]: the plan's whole decision, as plain JSON-able lists."""
        return [[list(x.kept_groups), list(x.kept_neurons)] for x in self.layers]

    def decision_hash(self) -> str:
        """12 hex digits of sha256 over the kept units: equal decisions, equal hashes (a result row names the plan
        it evaluated without carrying every unit)."""
        blob = json.dumps(self.kept_units(), separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def same_decision(self, other: PruningPlan) -> bool:
        """True when both plans keep exactly the same units."""
        return self.kept_units() == other.kept_units()
