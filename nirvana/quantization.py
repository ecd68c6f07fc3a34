"""Post-training quantization of a dense or pruned model, through torchao (no hand-written kernels).

Schemes (conf/quant/<scheme>.yaml):
  int8_wo           int8 weights, one scale per output channel; activations stay in float.
  w8a8              int8 weights + int8 activations quantized per token at run time (dynamic).
  w8a8_smoothquant  w8a8 after SmoothQuant (Xiao et al. 2023, the method the NIRVANA paper pairs with pruning): each
                    projection's input channel j is divided by s_j = max|X_j|^α / max|W_j|^(1-α) and its weight
                    column multiplied by it, with max|X_j| measured on calibration batches; α an option.
  int4_wo           4-bit weights in groups of `group_size` input channels (asymmetric, one scale and zero point per
                    group). torchao keeps the 4-bit values unpacked in int8 on CPU, so memory is int8's: this scheme
                    shows 4-bit *accuracy*, not 4-bit size, on CPU.

Only the block projections are converted (`adapter.block_linears()`); embeddings and the LM head stay in float.
Pruned checkpoints have a different width per layer, and a group size must divide a projection's input width:
`group_rule="shrink"` (default) uses the largest of group_size, group_size/2, … ≥ 32 that divides it and falls back
to one group per output channel (per-channel) when none does — e.g. an MLP width of 8·k that 32 does not divide;
`group_rule="error"` refuses such a model instead, naming the layer and its width. Every layer's decision is
returned (and saved) so tables can say what was run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import MISSING
from torch import nn

from .adapters import get_adapter

SCHEMES = ("int8_wo", "w8a8", "w8a8_smoothquant", "int4_wo")
GROUP_RULES = ("shrink", "error")
MIN_GROUP = 32
QUANT_FILENAME = "quantized.pt"  # state dict with torchao tensors (loads with weights_only=True)
SPEC_FILENAME = "quantization.json"


@dataclass
class QuantSpec:
    """A quantization scheme and its options: the schema of conf/quant/*.yaml (registered by nirvana.config)."""


    scheme: str = MISSING  # SCHEMES
    group_size: int = 128  # int4_wo
    group_rule: str = "shrink"  # int4_wo: shrink | error (module docstring)
    alpha: float = 0.5  # w8a8_smoothquant

    def label(self) -> str:
        """What rows put in their `dtype` column for a model quantized with this spec."""
        if self.scheme == "int4_wo":
            return f"int4_wo-g{self.group_size}"
        if self.scheme == "w8a8_smoothquant":
            return f"w8a8_smoothquant-a{self.alpha:g}"
        return self.scheme

    def __post_init__(self) -> None:
        """Bad names and values fail here, before anything is loaded."""
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown quantization scheme {self.scheme!r}; choose one of {SCHEMES}")
        if self.group_rule not in GROUP_RULES:
            raise ValueError(f"unknown group_rule {self.group_rule!r}; choose one of {GROUP_RULES}")
        if self.group_size < MIN_GROUP or self.group_size & (self.group_size - 1):
            raise ValueError(f"group_size must be a power of two ≥ {MIN_GROUP}, got {self.group_size}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha (SmoothQuant migration strength) must be in [0, 1], got {self.alpha}")

    @staticmethod
    def check_runtime() -> None:
        """torchao is importable (it is a dependency; a broken install fails here, not after pruning)."""
        try:
            import torchao  # noqa: F401
        except ImportError as exc:
            raise ImportError("quantization needs torchao (`make setup` installs it)") from exc


def group_for(width: int, spec: QuantSpec) -> int | None:
    """The int4 group size for a projection with `width` input channels; None: per output channel."""
    g = spec.group_size
    while g >= MIN_GROUP:
        if width % g == 0:
            return g
        if spec.group_rule == "error":
            break
        g //= 2
    return None


def plan_layers(model: nn.Module, spec: QuantSpec) -> dict[str, str]:
    """{module name: what it becomes}, checked before any weight changes: a float model, and (group_rule=error) every
    width divisible by group_size, or a ValueError naming the first layer that is not."""
    spec.check_runtime()
    linears = get_adapter(model).block_linears()
    if not linears:
        raise ValueError("no block projections to quantize in this model")
    decisions = {}
    for name, m in linears.items():
        if type(m.weight.data) is not torch.Tensor:  # a torchao tensor subclass
            raise ValueError(f"{name} is already quantized ({type(m.weight.data).__name__}): start from a float checkpoint")
        if not m.weight.is_floating_point():
            raise ValueError(f"{name} holds {m.weight.dtype} weights: quantize a float checkpoint")
        if spec.scheme != "int4_wo":
            decisions[name] = spec.label()
            continue
        g = group_for(m.in_features, spec)
        if g is None and spec.group_rule == "error":
            raise ValueError(f"{name}: input width {m.in_features} is not divisible by group_size {spec.group_size} "
                             f"(a pruned width); use group_rule=shrink or a smaller group_size")
        decisions[name] = f"int4_wo-g{g}" if g is not None else "int4_wo-per_channel"
    return decisions


def _config(decision: str, spec: QuantSpec, step: str | None = None):
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerAxis, PerGroup

    if decision == "int8_wo":
        return Int8WeightOnlyConfig()
    if decision == "w8a8":
        return Int8DynamicActivationInt8WeightConfig()
    if decision.startswith("w8a8_smoothquant"):
        from torchao.prototype.smoothquant import SmoothQuantConfig

        return SmoothQuantConfig(base_config=Int8DynamicActivationInt8WeightConfig(), step=step, alpha=spec.alpha)
    granularity = PerAxis(0) if decision.endswith("per_channel") else PerGroup(int(decision.rsplit("-g", 1)[1]))
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=granularity)


def _apply(model: nn.Module, decisions: dict[str, str], spec: QuantSpec, step: str | None = None) -> None:
    from torchao.quantization import quantize_

    for decision in sorted(set(decisions.values())):
        names = {n for n, d in decisions.items() if d == decision}
        quantize_(model, _config(decision, spec, step), filter_fn=lambda m, fqn, names=names: fqn in names)


def quantize(model: nn.Module, spec: QuantSpec, calibration_ids: torch.Tensor | None = None,
             batch_size: int = 8) -> dict[str, str]:
    """Quantize `model` in place; returns {module name: decision}. SmoothQuant needs `calibration_ids`."""
    decisions = plan_layers(model, spec)
    if spec.scheme != "w8a8_smoothquant":
        _apply(model, decisions, spec)
        return decisions
    if calibration_ids is None:
        raise ValueError("w8a8_smoothquant measures activation ranges: pass calibration_ids")
    _apply(model, decisions, spec, step="prepare")
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, calibration_ids.shape[0], batch_size):
            model(calibration_ids[start : start + batch_size].to(device))
    _apply(model, decisions, spec, step="convert")
    return decisions


def save_quantized(model: nn.Module, spec: QuantSpec, decisions: dict[str, str], out_dir: str | os.PathLike) -> Path:
    """The quantized weights of the converted projections plus the spec, next to (not inside) the float checkpoint
    they came from: `load_quantized` rebuilds the structure from that checkpoint and loads these."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] in decisions}
    torch.save(state, out / QUANT_FILENAME)
    (out / SPEC_FILENAME).write_text(json.dumps({"spec": asdict(spec), "layers": decisions}, indent=1))
    return out


def load_quantized(model: nn.Module, quant_dir: str | os.PathLike) -> tuple[QuantSpec, dict[str, str]]:
    """Give `model` (the float checkpoint the quantized one came from) the saved quantized weights, in place."""
    quant_dir = Path(quant_dir)
    saved = json.loads((quant_dir / SPEC_FILENAME).read_text())
    spec, decisions = QuantSpec(**saved["spec"]), saved["layers"]
    if plan_layers(model, spec) != decisions:
        raise ValueError(f"{quant_dir} was quantized from a model with other projections or widths than this one")
    _apply(model, decisions, spec, step="prepare_for_loading" if spec.scheme == "w8a8_smoothquant" else None)
    state = torch.load(quant_dir / QUANT_FILENAME, weights_only=True)
    missing = model.load_state_dict(state, strict=False, assign=True)
    if missing.unexpected_keys:
        raise ValueError(f"{quant_dir}: unexpected tensors {missing.unexpected_keys[:5]}")
    return spec, decisions


def model_bytes(model: nn.Module) -> int:
    """Bytes the model's state-dict tensors occupy in memory: each storage once (tied weights, views), torchao's
    tensor subclasses through their inner tensors (int data, scales, zero points) — what `torch.save` writes, less
    its pickle framing, without serialising anything."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    seen: set[int] = set()

    def storage_bytes(t: torch.Tensor) -> int:
        if is_traceable_wrapper_subclass(t):
            names, _ = t.__tensor_flatten__()
            return sum(storage_bytes(getattr(t, name)) for name in names)
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()

    return sum(storage_bytes(t) for t in model.state_dict().values())


def quantize_stage(model: nn.Module, tokenizer, spec: QuantSpec, calibration, calibration_ids: torch.Tensor | None) -> dict:
    """The run stage after pruning: quantize in place, with SmoothQuant's activation ranges from the pruning
    calibration batch (or, for a dense model, one drawn from the run's calibration config,
    nirvana.calibration.CalibrationConfig). Returns what rows record: the decision per layer, and bytes before and
    after."""
    if spec.scheme == "w8a8_smoothquant" and calibration_ids is None:
        from .calibration import build_calibration

        c = calibration
        calibration_ids = build_calibration(c.source, tokenizer, c.n_samples, c.seq_len, c.seed, c.path, c.join,
                                            c.field)
    before = model_bytes(model)
    decisions = quantize(model, spec, calibration_ids)
    return {"layers": decisions, "bytes_before": before, "bytes_after": model_bytes(model)}
