"""The adapter interface: where a model keeps its prunable units, and nothing else.

Scoring, allocation and surgery talk only to this interface (as SliceGPT's adapters do), so they never
spell out a model's attribute paths. A *unit* is the smallest thing we remove:
  - attention: one GQA group (a KV head and the query heads that read it), or one head without GQA;
  - mlp: one intermediate neuron.
A unit occupies a contiguous block of `block` indices along one dimension of each parameter it touches
(rows of q/k/v and gate/up, columns of o and down). `ParamSlice` records exactly that, so a generic routine
can score (sum |S| over the block) and cut (index_select the kept blocks) any architecture.

One group may span several modules: a `ParamSlice` may cover only a range of the group's units
(`units=(start, stop)`), e.g. a T5 decoder layer's attention group holds its self-attention heads as units
[0, H) and its cross-attention heads as units [H, 2H). Each such range is a *part*: it must keep ≥ 1 unit.
Layers may belong to named stacks (`LayerUnits.stack`: "encoder"/"decoder"); layers of one stack are alike.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from torch import nn

ATTENTION = "attention"
MLP = "mlp"
MODULE_KINDS = (ATTENTION, MLP)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once what it needs has been seen."""


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over predicted tokens (what `model(ids, labels=ids).loss` computes)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="mean"
    )


@dataclass(frozen=True)
class ParamSlice:
    """Unit u of a group owns indices [(u-start)*block, (u-start+1)*block) along `dim` of `module.<param_name>`,
    for the units [start, stop) = `units` the slice covers (None: all the group's units, start = 0)."""

    module: nn.Module
    param_name: str
    dim: int
    block: int
    units: tuple[int, int] | None = None

    @property
    def param(self) -> nn.Parameter:
        return getattr(self.module, self.param_name)

    def span(self, n_units: int) -> tuple[int, int]:
        """[start, stop) of the group's units this slice covers."""
        return self.units if self.units is not None else (0, n_units)

    def local(self, units: list[int], n_units: int) -> list[int]:
        """Group unit indices → this slice's block indices (units outside its span are dropped)."""
        start, stop = self.span(n_units)
        return [u - start for u in units if start <= u < stop]

    def element_index(self, local_units: list[int], device=None) -> torch.Tensor:
        """Indices along `dim` of the elements the given (slice-local) units own: each unit's whole block."""
        units = torch.as_tensor(local_units, dtype=torch.long, device=device)
        return (units[:, None] * self.block + torch.arange(self.block, device=device)[None, :]).flatten()


@dataclass
class UnitGroup:
    """All units of one kind (attention or mlp) in one layer, and the parameters they own."""

    kind: str
    layer: int
    n_units: int
    slices: list[ParamSlice] = field(default_factory=list)

    @property
    def unit_cost(self) -> int:
        """Parameters removed with one unit (weights and biases): what achieved sparsity and the baselines count.

        Every unit of a group must cost the same (true of heads and neurons); a group whose parts differ
        in per-unit cost is rejected rather than averaged."""
        return self._cost(with_biases=True)

    @property
    def weight_cost(self) -> int:
        """Weights removed with one unit: NIRVANA's closed-form budget counts these only, as the official code
        does (c_a = 2·head_dim·(n_rep + 1)·d_model even where Qwen2's q/k/v biases go with the group)."""
        return self._cost(with_biases=False)

    def _cost(self, with_biases: bool) -> int:
        costs = torch.zeros(self.n_units, dtype=torch.long)
        for s in self.slices:
            if not with_biases and s.param_name != "weight":
                continue
            p = s.param
            start, stop = s.span(self.n_units)
            costs[start:stop] += p.numel() // p.shape[s.dim] * s.block
        distinct = costs.unique().tolist()
        if len(distinct) > 1:
            raise ValueError(f"layer {self.layer} {self.kind}: units cost different numbers of parameters {distinct}")
        return int(distinct[0]) if distinct else 0

    def parts(self) -> list[tuple[int, int]]:
        """The unit ranges of the group's modules: one (0, n_units) unless slices cover sub-ranges."""
        spans = {s.span(self.n_units) for s in self.slices if s.units is not None}
        return sorted(spans) if spans else [(0, self.n_units)]

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
            start, stop = s.span(self.n_units)
            if not 0 <= start < stop <= self.n_units or size != (stop - start) * s.block:
                raise ValueError(
                    f"layer {self.layer} {self.kind}: {type(s.module).__name__}.{s.param_name} has {size} "
                    f"entries along dim {s.dim}, expected units [{start}, {stop}) of {self.n_units} x {s.block}"
                )


@dataclass
class LlamaLayout:
    """A decoder-only model seen as a stack of Llama blocks (RMSNorm → attention with rotary q/k → RMSNorm →
    SwiGLU MLP, residuals around both) whose layers each have their own widths: what an exporter to another
    runtime needs to know about the model (nirvana.deploy writes llama.cpp's `deci` GGUF from it), and nothing
    about that runtime. Lists have one entry per layer."""

    hidden_size: int
    head_dim: int
    vocab_size: int
    context_length: int
    norm_eps: float
    rope_theta: float
    # per rotary frequency, the default frequency (rope_theta) divided by the model's (None: all 1, plain RoPE);
    # how Llama 3.1's `llama3` and `linear` RoPE scaling reach runtimes that read frequency factors
    rope_factors: list[float] | None
    tied_embeddings: bool
    query_heads: list[int]
    kv_heads: list[int]
    ffn_widths: list[int]
    # state-dict name → number of heads its rows are grouped in: the rotary projections (q and k, weights and
    # biases), whose rows a runtime with interleaved RoPE needs permuted head by head
    rotary_rows: dict[str, int]
    # what this model computes that a Llama block does not (empty: the layout describes the model exactly)
    differences: list[str] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return len(self.query_heads)


@dataclass
class LayerUnits:
    index: int
    attention: UnitGroup
    mlp: UnitGroup
    stack: str = ""  # "encoder" / "decoder" for encoder-decoder models; "" for decoder-only models

    def group(self, kind: str) -> UnitGroup:
        return self.attention if kind == ATTENTION else self.mlp


class ModelAdapter:
    """Base class. Subclasses set `model_types` and implement the abstract methods."""

    model_types: tuple[str, ...] = ()
    # The transformers Auto class a saved checkpoint registers in `auto_map` (and loads with).
    auto_model_class: str = "AutoModelForCausalLM"
    # Pruners whose method does not apply to this architecture: compute_plan refuses them with a clear error.
    unsupported_pruners: tuple[str, ...] = ()
    # peft's task type for LoRA recovery (nirvana.recovery); seq2seq: training examples are (prompt → response)
    # pairs for an encoder and a decoder, not one causal text
    lora_task_type: str = "CAUSAL_LM"
    seq2seq: bool = False
    # lm-eval HFLM's backend for zero-shot evaluation ("default": lm-eval's own detection, causal for decoders)
    lm_eval_backend: str = "default"
    # Whether the model's logits are exactly its output embedding applied to the final hidden state (no logit
    # soft-capping or scaling): then the LM head may be applied to chosen positions only (scoring, evaluation).
    logits_are_head_of_hidden: bool = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # --- structure -------------------------------------------------------------------------------
    def layers(self) -> list[LayerUnits]:
        raise NotImplementedError

    def before_cut(self, group: UnitGroup, kept: list[int]) -> None:
        """Called by surgery just before `group` is cut to its `kept` units (indices into its current units),
        for architectures that must remember WHICH units survive, not only how many (T5: the heads' relative
        position bias). Default: nothing."""

    def after_surgery(self, layer: LayerUnits) -> None:
        """Update module attributes that cache widths (e.g. `mlp.intermediate_size`). Default: nothing."""

    def per_layer_overrides(self) -> dict[int, dict[str, int]]:
        """Config attributes of each layer as the model stands now (recorded in `per_layer_config`)."""
        raise NotImplementedError

    def record_layer_widths(self) -> None:
        """Write the current per-layer widths into the config, so the model (and its checkpoint) describes
        itself truthfully. Default: transformers' own `per_layer_config` field."""
        config = self.config
        # Stock modeling code (5.24) still reads the global widths; let it, while the per-layer truth is recorded.
        config.allow_global_per_layer_attribute_access = True
        overrides = self.per_layer_overrides()
        config.per_layer_config = {i: dict(o) for i, o in overrides.items()}

    def checkpoint_class_name(self) -> str:
        """Class in nirvana/checkpoint_code/modeling_nirvana.py that `auto_map` points to."""
        raise NotImplementedError

    # --- calibration forward ---------------------------------------------------------------------
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T', V] on a calibration batch [B, T]; the scorers' only way to run the model.
        Decoder-only: T' = T. Encoder–decoders: the decoder's positions over the window's continuation."""
        raise NotImplementedError

    def hidden_and_head(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, nn.Linear] | None:
        """(final hidden states [B, T, d], LM head) with logits == head(hidden), so that a scorer can apply the
        head a vocabulary chunk at a time; None where logits are not that (the scorer then uses `logits`)."""
        return None

    def output_head_weight(self) -> torch.Tensor | None:
        """The LM head's weight (tied or not): every calibration forward multiplies by it."""
        head = self.model.get_output_embeddings()
        return None if head is None else head.weight

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks, in execution order (what activation checkpointing wraps)."""
        raise NotImplementedError

    @contextmanager
    def activation_checkpointing(self):
        """Inside this context each block keeps only its inputs for backward and recomputes itself then.

        Wraps the blocks' `forward` instead of using transformers' `gradient_checkpointing_enable()`, which
        only acts in train mode — and train mode would switch on dropout (T5) and change the scores."""
        blocks = self.blocks()
        # An instance-level forward (accelerate's device_map hooks install one) is restored as it was.
        own = [block.__dict__.get("forward") for block in blocks]
        for block in blocks:
            inner = block.forward

            def checkpointed(*args, _inner=inner, **kwargs):
                return torch.utils.checkpoint.checkpoint(_inner, *args, use_reentrant=False, **kwargs)

            block.forward = checkpointed
        try:
            yield
        finally:
            for block, forward in zip(blocks, own):
                if forward is None:
                    del block.forward  # back to the class's method
                else:
                    block.forward = forward

    # --- layer-wise execution (activation statistics: nirvana.scoring.statistics) ---------------------------
    def block_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(hidden states, keyword arguments) with which the model calls its first block on `input_ids`:
        everything the blocks share (position embeddings, attention mask) is computed once, by the model
        itself, and the forward stops there."""
        captured: dict = {}

        def capture(_module, args, kwargs):
            kwargs = dict(kwargs)
            captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
            captured["kwargs"] = kwargs
            raise _StopForward

        handle = self.blocks()[0].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.logits(input_ids)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "hidden" not in captured:
            raise RuntimeError(f"{type(self).__name__}: the forward pass never reached the first block")
        return captured["hidden"], captured["kwargs"]

    @staticmethod
    def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """One block on stored inputs (from `block_inputs`, or the previous block's output)."""
        out = block(hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def lm_loss(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The LM cross-entropy of a calibration batch (Taylor's target). Default: next-token prediction."""
        return lm_loss(self.logits(input_ids), input_ids)

    # --- protocol views: what evaluation asks of a model (nirvana.evaluation) -------------------------------
    def window_logits(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, T', V], targets [B, T']) of perplexity windows [B, T]: every token a window predicts.
        Decoder-only: positions 1..T−1 from the tokens before them."""
        logits = self.model(input_ids=windows, use_cache=False).logits
        return logits[:, :-1], windows[:, 1:]

    def window_prefix(self, seq_len: int) -> int | None:
        """Tokens of a window that are context only (seq2seq: the encoder's prefix); None: a causal window."""
        return None

    def flops_per_token(self, prompt_len: int, new_tokens: int) -> tuple[float, float]:
        """(prefill, decode) forward FLOPs per token (multiply-add = 2), as nirvana.evaluation.speed documents:
        F(ctx) = 2 · P_linear + 4 · W_query · ctx, ctx = (prompt_len + 1) / 2 for prefill (causal attention)
        and prompt_len + new_tokens / 2 for decode."""
        linear = sum(m.weight.numel() for m in self.model.modules() if isinstance(m, nn.Linear))
        width = self.query_width()
        return (2.0 * linear + 4.0 * width * (prompt_len + 1) / 2,
                2.0 * linear + 4.0 * width * (prompt_len + new_tokens / 2))

    def query_width(self) -> int:
        """Σ over layers of n_query_heads × head_dim (what the attention term of the FLOPs scales with)."""
        raise NotImplementedError

    # Config fields a pruned checkpoint adds on top of its dense architecture (surgery and save_pruned write them).
    pruned_config_fields: tuple[str, ...] = ("per_layer_config", "is_heterogeneous", "auto_map",
                                             "allow_global_per_layer_attribute_access", "nirvana_output_bias")

    def is_pruned(self) -> bool:
        """Whether the config describes per-layer widths (a pruned model) rather than one dense architecture."""
        return bool(getattr(self.config, "is_heterogeneous", False))

    def dense_config(self):
        """The config of the dense architecture the model was pruned from (its widths before pruning)."""
        from transformers import AutoConfig

        d = self.config.to_dict()
        for k in self.pruned_config_fields:
            d.pop(k, None)
        return AutoConfig.for_model(d.pop("model_type"), **d)

    def lora_targets(self) -> list[str]:
        """Names (last component) of the Linear modules LoRA recovery wraps: every attention and MLP projection."""
        raise NotImplementedError

    def block_linears(self) -> dict[str, nn.Linear]:
        """Every attention and MLP projection by module name (the LoRA targets): what quantization converts; the
        embeddings and the LM head stay in float, as is usual for weight quantization."""
        targets = set(self.lora_targets())
        return {name: m for name, m in self.model.named_modules()
                if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets}

    def llama_layout(self) -> LlamaLayout:
        """The model as a stack of Llama blocks with per-layer widths (LlamaLayout); architectures that are no
        such stack say why."""
        raise ValueError(f"{type(self).__name__} ({self.config.model_type}) models are not a stack of Llama "
                         "decoder blocks: they cannot be exported in a Llama layout")

    def max_context(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)

    # --- generation (speed) -----------------------------------------------------------------------
    def prefill(self, ids: torch.Tensor) -> tuple[object, torch.Tensor]:
        """Run a prompt [B, T] building the KV cache: (state for `decode_step`, logits of its last position)."""
        out = self.model(input_ids=ids, use_cache=True)
        return out.cache, out.logits[:, -1:]  # transformers 5.x (pinned) names the KV cache `cache`

    def decode_step(self, state: object, token: torch.Tensor) -> tuple[object, torch.Tensor]:
        """One cached generation step for `token` [B, 1]: (new state, its logits)."""
        out = self.model(input_ids=token, cache=state, use_cache=True)
        return out.cache, out.logits[:, -1:]

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
