"""Inference speed (prefill and KV-cached decode throughput) and the FLOP ratio it should be compared with.

Timing: random token ids (speed does not depend on token values), one warm-up pass, then `repeats` timed
passes; the median is reported (robust to a noisy neighbour on shared machines). On CUDA every timed region is
closed by `torch.cuda.synchronize()` so that queued kernels are counted.
  - prefill tokens/s = batch × prompt_len / time of one forward over the prompt (building the KV cache);
  - decode tokens/s  = batch × new_tokens / time of `new_tokens` single-token steps reading that cache
    (greedy next token; no early stop, every step counts).

FLOPs per token (forward, multiply-add = 2 FLOPs), documented so that results can be checked by hand:
    F(ctx) = 2 · P_linear + 4 · Σ_layers (n_query_heads · head_dim) · ctx
  - P_linear: weights of every nn.Linear, LM head included (never pruned, and a large share of the work in
    small models with big vocabularies: 21 % of SmolLM2's weights); embeddings are lookups, norms and
    activations are ignored.
  - The attention term counts QKᵀ and A·V (2 · n_q · head_dim · ctx multiply-adds per token). Pruning a GQA
    group removes its query heads, so it shrinks this term too. `ctx` is the number of attended tokens, taken
    as its mean over the measured work: prompt_len + new_tokens / 2 for decode, (prompt_len + 1) / 2 for
    prefill (causal attention).
flop_ratio = F_pruned / F_dense (1 for an unpruned model); the ideal speed-up is 1 / flop_ratio, and
speed-up efficiency = measured speed-up / ideal speed-up = measured speed-up × flop_ratio.

Encoder–decoders (T5): the prompt goes to the encoder and the decoder generates. Prefill = the encoder pass
over the prompt plus the decoder's first step (which projects the encoder states into the cross-attention
cache); decode = `new_tokens` further decoder steps reusing the encoder output and both caches. Per token:
    prefill  F = 2 · (P_encoder + P_cross_kv) + 4 · W_encoder · prompt_len      (bidirectional attention)
    decode   F = 2 · (P_decoder − P_cross_kv + P_head) + 4 · W_self · new_tokens / 2 + 4 · W_cross · prompt_len
with P_* the Linear weights of the encoder, of the decoder's cross-attention k/v (applied to prompt tokens
once), of the decoder and of the LM head; W_* the summed query widths (heads × d_kv) of the encoder's
self-attention and of the decoder's self- and cross-attention.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn


# --- FLOPs -------------------------------------------------------------------------------------------------
def linear_params(model: nn.Module) -> int:
    """Weights of all nn.Linear modules (a tied LM head counts: it is still a matmul per token)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def query_width(model: nn.Module) -> int:
    """Σ over layers of n_query_heads × head_dim = Σ of q_proj output widths (Llama-family names)."""
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.endswith("q_proj"):
            total += m.out_features
    return total


def is_seq2seq(model: nn.Module) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def _linears(module: nn.Module, suffixes: tuple[str, ...] = ("",)) -> int:
    return sum(m.weight.numel() for n, m in module.named_modules() if isinstance(m, nn.Linear) and n.endswith(suffixes))


def _t5_widths(module: nn.Module, attention: str) -> int:
    return sum(m.out_features for n, m in module.named_modules() if n.endswith(f"{attention}.q"))


def seq2seq_flops_per_token(model: nn.Module, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """(prefill, decode) FLOPs per token of a T5-style encoder–decoder (module docstring)."""
    enc, dec = model.get_encoder(), model.get_decoder()
    cross_kv = _linears(dec, ("EncDecAttention.k", "EncDecAttention.v"))
    head = model.get_output_embeddings().weight.numel()
    prefill = 2.0 * (_linears(enc) + cross_kv) + 4.0 * _t5_widths(enc, "SelfAttention") * prompt_len
    decode = (2.0 * (_linears(dec) - cross_kv + head) + 4.0 * _t5_widths(dec, "SelfAttention") * new_tokens / 2
              + 4.0 * _t5_widths(dec, "EncDecAttention") * prompt_len)
    return prefill, decode


def flops_per_token(model: nn.Module, context: float) -> float:
    """F(ctx) = 2 · P_linear + 4 · Σ(n_q · head_dim) · ctx (see the module docstring)."""
    return 2.0 * linear_params(model) + 4.0 * query_width(model) * context


def flop_ratio(pruned: nn.Module, dense: nn.Module, context: float = 0.0) -> float:
    """F_pruned / F_dense at the same context."""
    return flops_per_token(pruned, context) / flops_per_token(dense, context)


def speedup_efficiency(measured_speedup: float, ratio: float) -> float:
    """Measured speed-up divided by the ideal (FLOP) speed-up 1 / ratio."""
    return measured_speedup * ratio


def dense_twin(model: nn.Module) -> nn.Module | None:
    """A randomly initialised dense model with the pruned model's original architecture (its config without
    `per_layer_config`), same dtype and device: timing does not depend on weight values, so this is the speed
    reference when the dense weights are not at hand. None when `model` is already homogeneous."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = model.config
    # transformers 5.x: is_heterogeneous is True once per_layer_config is set; T5 records its own field
    if not (getattr(config, "is_heterogeneous", False) or getattr(config, "nirvana_t5_layers", None)):
        return None
    d = config.to_dict()
    for k in ("per_layer_config", "is_heterogeneous", "auto_map", "allow_global_per_layer_attribute_access",
              "nirvana_output_bias", "nirvana_t5_layers"):
        d.pop(k, None)
    dense_config = AutoConfig.for_model(d.pop("model_type"), **d)
    p = next(model.parameters())
    auto = AutoModelForSeq2SeqLM if is_seq2seq(model) else AutoModelForCausalLM
    twin = auto.from_config(dense_config, dtype=p.dtype)
    return twin.to(p.device).eval()


# --- timing ------------------------------------------------------------------------------------------------
@dataclass
class SpeedResult:
    batch_size: int
    prompt_len: int
    new_tokens: int
    repeats: int
    prefill_tok_s: float  # median over repeats
    decode_tok_s: float
    prefill_s: list[float]  # every repeat, for spread
    decode_s: list[float]
    device: str
    dtype: str

    @property
    def tag(self) -> str:
        return f"bs{self.batch_size},p{self.prompt_len}"

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _one_pass(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    device = ids.device
    if is_seq2seq(model):
        return _one_seq2seq_pass(model, ids, new_tokens)
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    _sync(device)
    t1 = time.perf_counter()
    # transformers 5.x (pinned) names the KV cache `cache`, in the output and as the argument.
    cache = out.cache
    nxt = out.logits[:, -1:].argmax(-1)
    for _ in range(new_tokens):
        out = model(input_ids=nxt, cache=cache, use_cache=True)
        cache = out.cache
        nxt = out.logits[:, -1:].argmax(-1)
    _sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


@torch.no_grad()
def _one_seq2seq_pass(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Prefill: encoder over the prompt + the decoder's first step; decode: `new_tokens` cached decoder steps."""
    device = ids.device
    start = torch.full((ids.shape[0], 1), int(model.config.decoder_start_token_id), dtype=ids.dtype, device=device)
    _sync(device)
    t0 = time.perf_counter()
    encoded = model.get_encoder()(input_ids=ids)
    out = model(encoder_outputs=encoded, decoder_input_ids=start, use_cache=True)
    _sync(device)
    t1 = time.perf_counter()
    cache = out.cache
    nxt = out.logits[:, -1:].argmax(-1)
    for _ in range(new_tokens):
        out = model(encoder_outputs=encoded, decoder_input_ids=nxt, cache=cache, use_cache=True)
        cache = out.cache
        nxt = out.logits[:, -1:].argmax(-1)
    _sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def measure_speed(model, batch_size: int = 1, prompt_len: int = 128, new_tokens: int = 32, repeats: int = 5,
                  warmup: int = 1, seed: int = 0) -> SpeedResult:
    """Prefill and decode throughput of `model` on its own device (median of `repeats` after `warmup`)."""
    for name, v, low in (("batch_size", batch_size, 1), ("prompt_len", prompt_len, 1),
                         ("new_tokens", new_tokens, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if v < low:
            raise ValueError(f"{name} must be ≥ {low}, got {v}")
    p = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(model.config.vocab_size), (batch_size, prompt_len), generator=g).to(p.device)
    for _ in range(warmup):
        _one_pass(model, ids, min(new_tokens, 4))
    prefill, decode = [], []
    for _ in range(repeats):
        a, b = _one_pass(model, ids, new_tokens)
        prefill.append(a)
        decode.append(b)
    return SpeedResult(batch_size, prompt_len, new_tokens, repeats,
                       batch_size * prompt_len / statistics.median(prefill),
                       batch_size * new_tokens / statistics.median(decode),
                       prefill, decode, str(p.device), str(p.dtype).replace("torch.", ""))


def compare_speed(pruned, dense, repeats: int = 5, warmup: int = 1, **kwargs) -> dict[str, float]:
    """Measured speed-ups of `pruned` over `dense` (medians) and their efficiencies against the FLOP ratios.
    The two models are timed alternately, one repeat each in turn, so a load change on a shared machine hits
    both alike. `kwargs`: batch_size, prompt_len, new_tokens, seed (as `measure_speed`)."""
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    runs = {"pruned": [], "dense": []}
    for i in range(repeats):
        for name, m in (("pruned", pruned), ("dense", dense)):
            runs[name].append(measure_speed(m, repeats=1, warmup=warmup if i == 0 else 0, **kwargs))
    med = {name: {k: statistics.median(getattr(r, k) for r in rs) for k in ("prefill_tok_s", "decode_tok_s")}
           for name, rs in runs.items()}
    first = runs["pruned"][0]
    if is_seq2seq(pruned):
        (p_pre, p_dec), (d_pre, d_dec) = (seq2seq_flops_per_token(m, first.prompt_len, first.new_tokens)
                                          for m in (pruned, dense))
        prefill_ratio, decode_ratio = p_pre / d_pre, p_dec / d_dec
    else:
        prefill_ratio = flop_ratio(pruned, dense, (first.prompt_len + 1) / 2)
        decode_ratio = flop_ratio(pruned, dense, first.prompt_len + first.new_tokens / 2)
    prefill_speedup = med["pruned"]["prefill_tok_s"] / med["dense"]["prefill_tok_s"]
    decode_speedup = med["pruned"]["decode_tok_s"] / med["dense"]["decode_tok_s"]
    return {
        "prefill_tok_s": med["pruned"]["prefill_tok_s"], "decode_tok_s": med["pruned"]["decode_tok_s"],
        "dense_prefill_tok_s": med["dense"]["prefill_tok_s"], "dense_decode_tok_s": med["dense"]["decode_tok_s"],
        "prefill_flop_ratio": prefill_ratio, "decode_flop_ratio": decode_ratio,
        "prefill_speedup": prefill_speedup, "decode_speedup": decode_speedup,
        "prefill_efficiency": speedup_efficiency(prefill_speedup, prefill_ratio),
        "decode_efficiency": speedup_efficiency(decode_speedup, decode_ratio),
    }
