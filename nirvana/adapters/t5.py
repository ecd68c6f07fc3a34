"""Adapter for T5 encoder–decoders (`T5ForConditionalGeneration`): T5 v1.0 and v1.1 / Flan-T5.

Units
  - attention: one head (T5 has no GQA): rows [h·d_kv, (h+1)·d_kv) of q, k, v and the same columns of o.
  - mlp: one d_ff neuron: row n of `wi` (v1.0, ReLU) or of `wi_0` and `wi_1` (v1.1 / Flan, gated GELU),
    and column n of `wo`.

Layers: the adapter's layer list is the encoder's blocks, then the decoder's (`LayerUnits.stack` says which),
so plan layer `num_layers + i` is decoder block i. An encoder layer's attention group is its self-attention's
H heads; a decoder layer's attention group holds 2H units — its self-attention heads as units [0, H) and its
cross-attention heads as units [H, 2H) (two *parts*: each keeps ≥ 1 head). Every head costs 4·d_model·d_kv
and every neuron 2·d_model (v1.0) or 3·d_model (gated) in both stacks, so by default all heads form one
pool and all neurons another across both stacks (`pool="model"`); `pool="stack"` budgets each stack alone.

The relative position bias (`relative_attention_bias`, [num_buckets, H], in layer 0's self-attention of each
stack) is shared by all the stack's layers — stock T5 computes it in layer 0 and hands it on, head h of every
layer reading column h — so it is never cut, like the embeddings: a head pruned in layer 0 may survive in
layer 5. Surgery records each attention module's surviving dense head indices (`before_cut`) and turns the
module into `NirvanaT5Attention` (the checkpoint's modeling file), which passes the full-head bias along the
stack and gives each layer its own heads' columns. The checkpoint records the same head lists in
`config.nirvana_t5_layers`, so a fresh process rebuilds the identical model.

Calibration target for a seq2seq model (the scorers only see `logits` / `lm_loss`): each calibration window
of T tokens is split into a prefix — its first ⌊T·prefix_fraction⌋ tokens (default half), with the EOS token
appended as T5's encoder inputs always end with it — fed to the encoder, and a continuation — the remaining
tokens — the decoder predicts (teacher-forced: decoder inputs = the continuation shifted right behind the
decoder start token). NIRVANA's f is the official scalar on the decoder's logits [B, T−P, V]: max over
decoder positions, mean over batch and vocabulary. Taylor's loss is the decoder's cross-entropy on the
continuation. The same split defines the perplexity protocol (nirvana.evaluation.perplexity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ATTENTION, MLP, LayerUnits, ModelAdapter, ParamSlice, UnitGroup

PREFIX_FRACTION = 0.5  # share of each window fed to the encoder; the rest is the decoder's continuation
APPEND_EOS = True  # end the encoder input with EOS, as every T5 encoder input is in training


def split_windows(ids: torch.Tensor, eos_token_id: int | None, prefix_fraction: float = PREFIX_FRACTION,
                  append_eos: bool = APPEND_EOS) -> tuple[torch.Tensor, torch.Tensor]:
    """Token windows [B, T] → (encoder input ids [B, P(+1)], decoder labels [B, T−P]), P = ⌊T·fraction⌋."""
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise ValueError(f"seq2seq windows must be [n, T] with T ≥ 2 (a prefix and a continuation), got {tuple(ids.shape)}")
    if not 0.0 < prefix_fraction < 1.0:
        raise ValueError(f"prefix_fraction must be in (0, 1), got {prefix_fraction}")
    t = ids.shape[1]
    p = min(t - 1, max(1, int(t * prefix_fraction)))
    encoder_ids, labels = ids[:, :p].contiguous(), ids[:, p:].contiguous()
    if append_eos and eos_token_id is not None:
        eos = torch.full((ids.shape[0], 1), int(eos_token_id), dtype=ids.dtype, device=ids.device)
        encoder_ids = torch.cat([encoder_ids, eos], dim=1)
    return encoder_ids, labels


def prefix_length(seq_len: int, prefix_fraction: float = PREFIX_FRACTION) -> int:
    return min(seq_len - 1, max(1, int(seq_len * prefix_fraction)))


def configured_prefix_fraction(config) -> float:
    """The model's protocol setting (conf/model/*t5*.yaml `prefix_fraction`, kept in its config), else the default."""
    return float(getattr(config, "nirvana_prefix_fraction", PREFIX_FRACTION))


def seq2seq_logits(model, ids: torch.Tensor, prefix_fraction: float | None = None,
                   append_eos: bool = APPEND_EOS) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder logits [B, T−P, V], labels [B, T−P]) of an encoder–decoder on windows split as above.

    Generic over HF seq2seq LMs: the decoder inputs come from the model's own
    `prepare_decoder_input_ids_from_labels` (T5: shift right behind `decoder_start_token_id`)."""
    config = model.config
    if prefix_fraction is None:
        prefix_fraction = configured_prefix_fraction(config)
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    encoder_ids, labels = split_windows(ids, eos, prefix_fraction, append_eos)
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(input_ids=encoder_ids, decoder_input_ids=decoder_ids, use_cache=False).logits
    return logits, labels


def _rows(linear, block: int, units: tuple[int, int]) -> list[ParamSlice]:
    out = [ParamSlice(linear, "weight", 0, block, units)]
    if linear.bias is not None:
        out.append(ParamSlice(linear, "bias", 0, block, units))
    return out


class T5Adapter(ModelAdapter):
    model_types = ("t5",)
    auto_model_class = "AutoModelForSeq2SeqLM"
    lora_task_type = "SEQ_2_SEQ_LM"
    seq2seq = True
    lm_eval_backend = "seq2seq"  # the context goes to the encoder, the continuation is scored by the decoder
    # Wanda-sp and FLAP are activation-statistics methods written for decoder-only blocks (one attention,
    # one MLP, inputs replayed layer by layer); they have no encoder–decoder formulation here.
    unsupported_pruners = ("wanda_sp", "flap")

    # --- structure -------------------------------------------------------------------------------
    def _blocks(self):
        from ..checkpoint_code.modeling_nirvana import t5_blocks

        return list(t5_blocks(self.model))

    def blocks(self):
        return [block for _, _, block, _, _ in self._blocks()]

    @staticmethod
    def _n_heads(attn) -> int:
        return attn.q.weight.shape[0] // attn.key_value_proj_dim

    def _attention_spans(self, attns) -> list[tuple[str, object, tuple[int, int]]]:
        spans, start = [], 0
        for key, attn in attns:
            h = self._n_heads(attn)
            spans.append((key, attn, (start, start + h)))
            start += h
        return spans

    def layers(self) -> list[LayerUnits]:
        out = []
        for index, (stack, _, _, attns, ff) in enumerate(self._blocks()):
            slices = []
            spans = self._attention_spans(attns)
            for _, attn, span in spans:
                d = attn.key_value_proj_dim
                slices += _rows(attn.q, d, span) + _rows(attn.k, d, span) + _rows(attn.v, d, span)
                slices.append(ParamSlice(attn.o, "weight", 1, d, span))  # o's bias (none in T5) is per output
            attention = UnitGroup(ATTENTION, index, spans[-1][2][1], slices)
            inputs = [getattr(ff, n) for n in ("wi", "wi_0", "wi_1") if hasattr(ff, n)]
            mlp = UnitGroup(MLP, index, ff.wo.weight.shape[1],
                            [s for lin in inputs for s in _rows(lin, 1, None)] + [ParamSlice(ff.wo, "weight", 1, 1)])
            attention.check()
            mlp.check()
            out.append(LayerUnits(index, attention, mlp, stack=stack))
        return out

    @staticmethod
    def head_ids(attn) -> list[int]:
        """The dense model's indices of the heads `attn` holds now (all of them until surgery)."""
        ids = getattr(attn, "nirvana_head_ids", None)
        return list(ids) if ids is not None else list(range(T5Adapter._n_heads(attn)))

    def before_cut(self, group: UnitGroup, kept: list[int]) -> None:
        if group.kind != ATTENTION:
            return
        _, _, _, attns, _ = self._blocks()[group.layer]
        for _, attn, (start, stop) in self._attention_spans(attns):
            ids = self.head_ids(attn)
            attn.nirvana_head_ids = [ids[u - start] for u in kept if start <= u < stop]

    def after_surgery(self, layer: LayerUnits) -> None:
        from ..checkpoint_code.modeling_nirvana import prune_t5_attention

        _, _, _, attns, _ = self._blocks()[layer.index]
        for _, attn in attns:
            prune_t5_attention(attn, self.head_ids(attn))

    def widths(self) -> dict[str, list[dict]]:
        """The per-block record written to `config.nirvana_t5_layers` (see modeling_nirvana.py)."""
        spec: dict[str, list[dict]] = {"encoder": [], "decoder": []}
        for stack, _, _, attns, ff in self._blocks():
            entry = {key: self.head_ids(attn) for key, attn in attns}
            entry["d_ff"] = int(ff.wo.weight.shape[1])
            spec[stack].append(entry)
        return spec

    def per_layer_overrides(self) -> dict[int, dict[str, int]]:
        out = {}
        for index, (_, _, _, attns, ff) in enumerate(self._blocks()):
            out[index] = {key.replace("_heads", "_num_heads"): self._n_heads(attn) for key, attn in attns}
            out[index]["d_ff"] = int(ff.wo.weight.shape[1])
        return out

    def record_layer_widths(self) -> None:
        # transformers' per_layer_config is keyed by layer index < num_hidden_layers (= the encoder's) and
        # has no notion of a second attention module, so T5 widths go in their own field.
        from ..checkpoint_code.modeling_nirvana import T5_LAYERS_FIELD

        setattr(self.config, T5_LAYERS_FIELD, self.widths())

    def checkpoint_class_name(self) -> str:
        return "NirvanaT5ForConditionalGeneration"

    def lora_targets(self) -> list[str]:
        ff = self._blocks()[0][4]
        return ["q", "k", "v", "o", *(n for n in ("wi", "wi_0", "wi_1") if hasattr(ff, n)), "wo"]

    # --- calibration forward ---------------------------------------------------------------------
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return seq2seq_logits(self.model, input_ids)[0]

    def lm_loss(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits, labels = seq2seq_logits(self.model, input_ids)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="mean")

    # --- protocol views ------------------------------------------------------------------------------
    pruned_config_fields = (*ModelAdapter.pruned_config_fields, "nirvana_t5_layers")

    def is_pruned(self) -> bool:
        from ..checkpoint_code.modeling_nirvana import T5_LAYERS_FIELD

        return bool(getattr(self.config, T5_LAYERS_FIELD, None))

    def window_logits(self, windows: torch.Tensor):
        return seq2seq_logits(self.model, windows)  # prefix → encoder, continuation → decoder targets

    def window_prefix(self, seq_len: int) -> int | None:
        return prefix_length(seq_len, configured_prefix_fraction(self.config))

    def flops_per_token(self, prompt_len: int, new_tokens: int) -> tuple[float, float]:
        """The prompt goes to the encoder, the decoder generates (nirvana.evaluation.speed documents it):
        prefill F = 2·(P_encoder + P_cross_kv) + 4·W_encoder·prompt_len                     (bidirectional)
        decode  F = 2·(P_decoder − P_cross_kv + P_head) + 4·W_self·new_tokens/2 + 4·W_cross·prompt_len."""
        model = self.model
        enc, dec = model.get_encoder(), model.get_decoder()

        def linears(module, suffixes=("",)) -> int:
            return sum(m.weight.numel() for n, m in module.named_modules()
                       if isinstance(m, torch.nn.Linear) and n.endswith(suffixes))

        def widths(module, attention: str) -> int:
            return sum(m.out_features for n, m in module.named_modules() if n.endswith(f"{attention}.q"))

        cross_kv = linears(dec, ("EncDecAttention.k", "EncDecAttention.v"))
        head = model.get_output_embeddings().weight.numel()
        prefill = 2.0 * (linears(enc) + cross_kv) + 4.0 * widths(enc, "SelfAttention") * prompt_len
        decode = (2.0 * (linears(dec) - cross_kv + head) + 4.0 * widths(dec, "SelfAttention") * new_tokens / 2
                  + 4.0 * widths(dec, "EncDecAttention") * prompt_len)
        return prefill, decode

    def block_inputs(self, input_ids: torch.Tensor):
        raise NotImplementedError("layer-wise activation statistics are defined for decoder-only models "
                                  f"(the pruners that need them, {', '.join(self.unsupported_pruners)}, do not apply to T5)")

    def max_context(self) -> int | None:
        return None  # relative positions: no trained length limit to check calibration against

    def prefill(self, ids):
        """The encoder over the prompt plus the decoder's first step (which projects the encoder states into the
        cross-attention cache)."""
        start = torch.full((ids.shape[0], 1), int(self.config.decoder_start_token_id), dtype=ids.dtype,
                           device=ids.device)
        encoded = self.model.get_encoder()(input_ids=ids)
        out = self.model(encoder_outputs=encoded, decoder_input_ids=start, use_cache=True)
        return (encoded, out.cache), out.logits[:, -1:]

    def decode_step(self, state, token):
        """A cached decoder step reusing the encoder output and both caches."""
        encoded, cache = state
        out = self.model(encoder_outputs=encoded, decoder_input_ids=token, cache=cache, use_cache=True)
        return (encoded, out.cache), out.logits[:, -1:]
