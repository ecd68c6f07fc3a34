"""Adapter for Llama-style decoders: Llama 3.x, Mistral, Qwen2/2.5, Qwen3.

They share module names (`model.layers[i].self_attn.{q,k,v,o}_proj`, `.mlp.{gate,up,down}_proj`) and HF's
`repeat_kv` head order, so one adapter serves all four; per-family differences are only which projections
carry biases (Qwen2: q/k/v) and Qwen3's q_norm/k_norm, which act within one head_dim and so are untouched by
removing whole heads.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ATTENTION, MLP, LayerUnits, LlamaLayout, ModelAdapter, ParamSlice, UnitGroup


def _row_and_bias_slices(linear, block: int) -> list[ParamSlice]:
    slices = [ParamSlice(linear, "weight", 0, block)]
    if linear.bias is not None:
        slices.append(ParamSlice(linear, "bias", 0, block))
    return slices


class LlamaFamilyAdapter(ModelAdapter):
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    # *ForCausalLM computes logits = lm_head(last_hidden_state) for these four families
    logits_are_head_of_hidden = True
    _checkpoint_classes = {
        "llama": "NirvanaLlamaForCausalLM",
        "mistral": "NirvanaMistralForCausalLM",
        "qwen2": "NirvanaQwen2ForCausalLM",
        "qwen3": "NirvanaQwen3ForCausalLM",
    }

    def checkpoint_class_name(self) -> str:
        return self._checkpoint_classes[self.config.model_type]

    def _decoder_layers(self):
        return self.model.model.layers

    def _head_dim(self, attn) -> int:
        return int(attn.head_dim)

    def layers(self) -> list[LayerUnits]:
        out = []
        for i, block in enumerate(self._decoder_layers()):
            attn, mlp = block.self_attn, block.mlp
            hd = self._head_dim(attn)
            # Query head h reads KV head h // n_rep (HF repeat_kv order), so GQA group g owns the n_rep
            # consecutive query heads g*n_rep ... (g+1)*n_rep-1: a contiguous block of n_rep*head_dim rows.
            n_rep = int(attn.num_key_value_groups)
            n_groups = attn.k_proj.weight.shape[0] // hd
            attention = UnitGroup(
                ATTENTION,
                i,
                n_groups,
                _row_and_bias_slices(attn.q_proj, n_rep * hd)
                + _row_and_bias_slices(attn.k_proj, hd)
                + _row_and_bias_slices(attn.v_proj, hd)
                # o_proj's bias (if any) is per output feature (the hidden size): it belongs to no unit.
                + [ParamSlice(attn.o_proj, "weight", 1, n_rep * hd)],
            )
            n_neurons = mlp.gate_proj.weight.shape[0]
            mlp_units = UnitGroup(
                MLP,
                i,
                n_neurons,
                _row_and_bias_slices(mlp.gate_proj, 1)
                + _row_and_bias_slices(mlp.up_proj, 1)
                + [ParamSlice(mlp.down_proj, "weight", 1, 1)],
            )
            attention.check()
            mlp_units.check()
            out.append(LayerUnits(i, attention, mlp_units))
        return out

    def after_surgery(self, layer: LayerUnits) -> None:
        mlp = self._decoder_layers()[layer.index].mlp
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = mlp.gate_proj.weight.shape[0]

    def per_layer_overrides(self) -> dict[int, dict[str, int]]:
        out = {}
        for i, block in enumerate(self._decoder_layers()):
            attn = block.self_attn
            hd = self._head_dim(attn)
            n_kv = attn.k_proj.weight.shape[0] // hd
            out[i] = {
                "num_attention_heads": n_kv * int(attn.num_key_value_groups),
                "num_key_value_heads": n_kv,
                "intermediate_size": block.mlp.gate_proj.weight.shape[0],
            }
        return out

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits

    def hidden_and_head(self, input_ids: torch.Tensor):
        # logits == lm_head(last_hidden_state) here (logits_are_head_of_hidden), so the head can be applied
        # chunk by chunk.
        hidden = self.model.model(input_ids=input_ids, use_cache=False).last_hidden_state
        return hidden, self.model.get_output_embeddings()

    def blocks(self):
        return list(self._decoder_layers())

    def query_width(self) -> int:
        return sum(block.self_attn.q_proj.out_features for block in self._decoder_layers())

    def lora_targets(self) -> list[str]:
        return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    # RoPE variants that only rescale the rotary frequencies (what a frequency-factor tensor can carry); others
    # (yarn, longrope, dynamic NTK) change attention in ways a Llama block with plain RoPE does not
    _rescaling_rope_types = ("default", "linear", "llama3")

    def llama_layout(self) -> LlamaLayout:
        config, layers = self.config, self._decoder_layers()
        first = layers[0]
        head_dim = self._head_dim(first.self_attn)
        names = {id(p): n for n, p in self.model.named_parameters()}
        widths = self.per_layer_overrides()
        rotary_rows = {}
        for i, block in enumerate(layers):
            attn = block.self_attn
            for linear, heads in ((attn.q_proj, widths[i]["num_attention_heads"]),
                                  (attn.k_proj, widths[i]["num_key_value_heads"])):
                for p in (linear.weight, linear.bias):
                    if p is not None:
                        rotary_rows[names[id(p)]] = heads
        differences = []
        if hasattr(first.self_attn, "q_norm"):
            differences.append("per-head RMSNorm of q and k (q_norm/k_norm, Qwen3)")
        window = getattr(config, "sliding_window", None)  # a window as long as the context never slides
        if window and getattr(config, "use_sliding_window", True) and window < config.max_position_embeddings:
            differences.append(f"sliding-window attention over {window} tokens")
        if getattr(config, "hidden_act", "silu") != "silu":
            differences.append(f"MLP activation {config.hidden_act!r} (a Llama block gates with silu)")
        rope = self.model.model.rotary_emb
        rope_type = getattr(rope, "rope_type", "default")
        if rope_type not in self._rescaling_rope_types:
            differences.append(f"RoPE type {rope_type!r} (exportable: {', '.join(self._rescaling_rope_types)})")
        if float(getattr(rope, "attention_scaling", 1.0)) != 1.0:
            differences.append(f"RoPE attention scaling {rope.attention_scaling}")
        theta = float(config.rope_parameters["rope_theta"])
        plain = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        factors = (plain / rope.inv_freq.double()).tolist()
        output, embedding = self.model.get_output_embeddings(), self.model.get_input_embeddings()
        return LlamaLayout(
            hidden_size=int(config.hidden_size), head_dim=head_dim, vocab_size=int(embedding.weight.shape[0]),
            context_length=int(config.max_position_embeddings), norm_eps=float(config.rms_norm_eps),
            rope_theta=theta,
            rope_factors=None if all(abs(f - 1.0) < 1e-6 for f in factors) else factors,
            tied_embeddings=isinstance(output, nn.Linear) and output.weight is embedding.weight,
            query_heads=[w["num_attention_heads"] for w in widths.values()],
            kv_heads=[w["num_key_value_heads"] for w in widths.values()],
            ffn_widths=[w["intermediate_size"] for w in widths.values()],
            rotary_rows=rotary_rows, differences=differences)
