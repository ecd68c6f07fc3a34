"""Modeling code shipped inside every pruned NIRVANA checkpoint (loaded via `auto_map` + trust_remote_code).

It imports nothing but torch and transformers, so a pruned checkpoint loads without the `nirvana` package:

    AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)

Why it exists: transformers 5.x records heterogeneous layers in `config.per_layer_config` (we write the
pruned widths there), but its Llama/Mistral/Qwen2/Qwen3 modeling code still builds every layer from the
global sizes. These classes build the stock model, then give each layer the projection shapes its
`per_layer_config` entry says, before the weights are loaded. Attention keeps working because pruning
removes whole GQA groups: the query-heads-per-KV-head ratio and head_dim never change, and the stock forward
infers the number of heads from the tensor shapes. When stock transformers builds layers from
`per_layer_config`, the same config.json will load without this file.

T5 (`NirvanaT5ForConditionalGeneration`, loaded through AutoModelForSeq2SeqLM): `per_layer_config` cannot
describe two stacks whose decoder layers hold two attention modules, so the widths live in the config's own
field `nirvana_t5_layers` = {"encoder": [{"self_attention_heads": [...], "d_ff": n}, ...], "decoder":
[{"self_attention_heads": [...], "cross_attention_heads": [...], "d_ff": n}, ...]} — head lists are the
DENSE model's head indices each layer kept. Stock T5 computes the relative position bias once, in layer 0
of each stack (`relative_attention_bias`, [num_buckets, n_heads]), and hands that tensor to every later
layer, so head h of layer i uses column h. Once layers keep different heads, the handed-on bias has the
wrong heads (and the wrong count). Here the table keeps all the dense heads (it is shared by every layer,
so no layer's pruning may cut it; it is [32, n_heads], negligible), the bias handed from layer to layer
always carries all the dense heads, and each layer selects its own heads' columns (`NirvanaT5Attention`).
Cross-attention has no position bias; each layer builds its own zero bias of its own head count.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import (
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
    T5ForConditionalGeneration,
)
from transformers.models.t5.modeling_t5 import T5Attention


class _KnownHeterogeneousAccess(logging.Filter):
    """Drop transformers' warning about reading global widths from a per-layer config: this code builds each
    layer from its own entry, so the global values it reads are only the starting shapes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "per-layer attribute" not in record.getMessage()


logging.getLogger("transformers.integrations.heterogeneity.configuration_utils").addFilter(
    _KnownHeterogeneousAccess()
)


def _like(linear: nn.Linear, in_features: int, out_features: int, bias: bool | None = None) -> nn.Linear:
    has_bias = linear.bias is not None if bias is None else bias
    return nn.Linear(in_features, out_features, bias=has_bias, device=linear.weight.device, dtype=linear.weight.dtype)


def apply_per_layer_widths(model: nn.Module) -> None:
    config = model.config
    # FLAP-style bias compensation gives o_proj/down_proj an output bias the stock classes lack.
    output_bias = bool(getattr(config, "nirvana_output_bias", False))
    heterogeneous = bool(getattr(config, "is_heterogeneous", False))
    if not heterogeneous and not output_bias:
        return
    for i, layer in enumerate(model.model.layers):
        layer_config = config.per_layer_config[i] if heterogeneous else config
        attn, mlp = layer.self_attn, layer.mlp
        hidden = attn.q_proj.in_features
        q_out = layer_config.num_attention_heads * attn.head_dim
        kv_out = layer_config.num_key_value_heads * attn.head_dim
        attn.q_proj = _like(attn.q_proj, hidden, q_out)
        attn.k_proj = _like(attn.k_proj, hidden, kv_out)
        attn.v_proj = _like(attn.v_proj, hidden, kv_out)
        attn.o_proj = _like(attn.o_proj, q_out, hidden, bias=(attn.o_proj.bias is not None) or output_bias)
        width = layer_config.intermediate_size
        mlp.gate_proj = _like(mlp.gate_proj, hidden, width)
        mlp.up_proj = _like(mlp.up_proj, hidden, width)
        mlp.down_proj = _like(mlp.down_proj, width, hidden, bias=(mlp.down_proj.bias is not None) or output_bias)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width


def _pruned_class(base: type) -> type:
    class Pruned(base):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            apply_per_layer_widths(self)

    Pruned.__name__ = Pruned.__qualname__ = f"Nirvana{base.__name__}"
    return Pruned


NirvanaLlamaForCausalLM = _pruned_class(LlamaForCausalLM)
NirvanaMistralForCausalLM = _pruned_class(MistralForCausalLM)
NirvanaQwen2ForCausalLM = _pruned_class(Qwen2ForCausalLM)
NirvanaQwen3ForCausalLM = _pruned_class(Qwen3ForCausalLM)


# --- T5 --------------------------------------------------------------------------------------------------
T5_LAYERS_FIELD = "nirvana_t5_layers"


class NirvanaT5Attention(T5Attention):
    """T5 attention that holds any subset `nirvana_head_ids` (dense head indices, in order) of the heads.

    The position bias passed between layers has ALL the dense heads: layer 0 computes it from the whole
    table (`compute_bias`, stashed for the layers after it), every layer — layer 0 included — attends with
    its own heads' columns, and hands the full tensor on unchanged. With every head kept this is exactly
    stock T5 (the selection is the identity). Everything else is the stock forward (caches, masks, sdpa).
    """

    nirvana_head_ids: list[int]

    def _own_heads(self, bias: torch.Tensor) -> torch.Tensor:
        ids = self.nirvana_head_ids
        if bias.shape[1] == len(ids) and ids == list(range(len(ids))):
            return bias
        cache = self.__dict__.setdefault("_nirvana_index", {})
        key = (bias.device, tuple(ids))
        if key not in cache:
            cache.clear()
            cache[key] = torch.tensor(ids, dtype=torch.long, device=bias.device)
        return bias.index_select(1, cache[key])

    def compute_bias(self, query_length, key_length, device=None, past_seen_tokens=0):
        full = super().compute_bias(query_length, key_length, device=device, past_seen_tokens=past_seen_tokens)
        self._nirvana_full_bias = full
        return self._own_heads(full)

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None, **kwargs):
        full = position_bias  # all dense heads, from the stack's layer 0 (None in layer 0 itself)
        own = None if full is None else self._own_heads(full)
        self._nirvana_full_bias = None
        out, _, weights = super().forward(hidden_states, mask=mask, key_value_states=key_value_states,
                                          position_bias=own, cache=cache, **kwargs)
        if full is None:
            # layer 0 of a self-attention stack: hand on the whole bias it computed. Cross-attention (no
            # table): hand on nothing, so each layer builds zeros of its own head count.
            full = self._nirvana_full_bias
        self._nirvana_full_bias = None
        return out, full, weights


def prune_t5_attention(attn: T5Attention, head_ids: list[int]) -> None:
    """Make `attn` (projections already `len(head_ids)` heads wide) a NirvanaT5Attention for `head_ids`."""
    attn.__class__ = NirvanaT5Attention
    attn.nirvana_head_ids = [int(h) for h in head_ids]
    attn.n_heads = len(head_ids)
    attn.inner_dim = attn.n_heads * attn.key_value_proj_dim
    attn.__dict__.pop("_nirvana_index", None)


def t5_blocks(model: nn.Module):
    """(stack name, block index, block, [(config key, attention module)], feed-forward module) for every block."""
    for stack_name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        for i, block in enumerate(stack.block):
            attns = [("self_attention_heads", block.layer[0].SelfAttention)]
            if stack_name == "decoder":
                attns.append(("cross_attention_heads", block.layer[1].EncDecAttention))
            yield stack_name, i, block, attns, block.layer[-1].DenseReluDense


def apply_t5_layers(model: nn.Module) -> None:
    """Give every T5 block the heads and d_ff that `config.nirvana_t5_layers` records (before loading weights)."""
    spec = getattr(model.config, T5_LAYERS_FIELD, None)
    if not spec:
        return
    for stack_name, i, _, attns, ff in t5_blocks(model):
        entry = spec[stack_name][i]
        for key, attn in attns:
            ids = entry[key]
            hidden, width = attn.q.in_features, len(ids) * attn.key_value_proj_dim
            attn.q, attn.k, attn.v = (_like(attn.q, hidden, width), _like(attn.k, hidden, width),
                                      _like(attn.v, hidden, width))
            attn.o = _like(attn.o, width, hidden)
            prune_t5_attention(attn, ids)
        d_ff, hidden = int(entry["d_ff"]), ff.wo.out_features
        for name in ("wi", "wi_0", "wi_1"):
            if hasattr(ff, name):
                setattr(ff, name, _like(getattr(ff, name), hidden, d_ff))
        ff.wo = _like(ff.wo, d_ff, hidden)


class NirvanaT5ForConditionalGeneration(T5ForConditionalGeneration):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_t5_layers(self)
