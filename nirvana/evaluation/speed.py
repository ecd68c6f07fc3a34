"""Inference speed (prefill and KV-cached decode throughput) and the FLOP ratio it should be compared with.

Timing: random token ids (speed does not depend on token values), one warm-up pass, then `repeats` timed
passes; the median is reported (robust to a noisy neighbour on shared machines). On CUDA every timed region is
closed by `torch.cuda.synchronize()` so that queued kernels are counted.
  - prefill tokens/s = batch × prompt_len / time of one forward over the prompt (building the KV cache);
  - decode tokens/s  = batch × new_tokens / time of `new_tokens` single-token steps reading that cache
    (greedy next token; no early stop, every step counts).

FLOPs per token (forward, multiply-add = 2 FLOPs; each model's adapter counts them), documented so that results
can be checked by hand:
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

from ..adapters import get_adapter


# --- FLOPs -------------------------------------------------------------------------------------------------
def flops_per_token(model: nn.Module, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """(prefill, decode) FLOPs per token; the model's adapter counts them (module docstring)."""
    return get_adapter(model).flops_per_token(prompt_len, new_tokens)


def flop_ratios(pruned: nn.Module, dense: nn.Module, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """(prefill, decode) F_pruned / F_dense for the same work."""
    (p_pre, p_dec), (d_pre, d_dec) = (flops_per_token(m, prompt_len, new_tokens) for m in (pruned, dense))
    return p_pre / d_pre, p_dec / d_dec


def speedup_efficiency(measured_speedup: float, ratio: float) -> float:
    """Measured speed-up divided by the ideal (FLOP) speed-up 1 / ratio."""
    return measured_speedup * ratio


def dense_twin(model: nn.Module) -> nn.Module | None:
    """A randomly initialised dense model with the pruned model's original architecture (the adapter's dense view
    of its config), same dtype and device: timing does not depend on weight values, so this is the speed
    reference when the dense weights are not at hand. None when `model` is not pruned."""
    import transformers

    adapter = get_adapter(model)
    if not adapter.is_pruned():
        return None
    p = next(model.parameters())
    twin = getattr(transformers, adapter.auto_model_class).from_config(adapter.dense_config(), dtype=p.dtype)
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

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _one_pass(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generation; the model's adapter runs its family's cache."""
    adapter, device = get_adapter(model), ids.device
    _sync(device)
    t0 = time.perf_counter()
    state, logits = adapter.prefill(ids)
    _sync(device)
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        state, logits = adapter.decode_step(state, logits.argmax(-1))
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
    prefill_ratio, decode_ratio = flop_ratios(pruned, dense, first.prompt_len, first.new_tokens)
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
