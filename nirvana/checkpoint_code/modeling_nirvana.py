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
"""

from __future__ import annotations

import logging

from torch import nn
from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM


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
