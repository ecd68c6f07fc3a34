"""Does llama.cpp compute what transformers computes? Logits of an exported GGUF against the source model's.

    report = logit_parity(model, tokenizer, "model.gguf")   # llama.cpp in its exact mode (f32 KV cache)
    report["max_abs_logit_difference"], report["argmax_agreement"], report["greedy_equal"]

On a few fixed prompts (prose, a chat turn through the tokenizer's template, code, a long repetitive text): the
largest |Δlogit| over every position, the share of positions with the same argmax, and whether `new_tokens` greedy
tokens agree. For an f32 GGUF the project's tests require ≤ 1e-3, all argmaxes and all greedy tokens equal; a
quantized GGUF is expected to differ (its numbers say by how much).
"""

from __future__ import annotations

import numpy as np
import torch

from . import runtime

PROMPTS = ("The history of the Roman Empire began when",
           'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:',
           " ".join(["Pruning removes whole attention groups and MLP neurons from every layer."] * 12))
CHAT = "What is the capital of France?"


def parity_prompts(tokenizer) -> list[list[int]]:
    """The fixed prompts as token ids (the chat turn only where the tokenizer has a chat template)."""
    texts = list(PROMPTS)
    if getattr(tokenizer, "chat_template", None):
        texts.insert(1, tokenizer.apply_chat_template([{"role": "user", "content": CHAT}], add_generation_prompt=True,
                                                      tokenize=False))
    return [tokenizer(t)["input_ids"] for t in texts]


@torch.no_grad()
def reference_greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    """transformers' greedy continuation, argmax by argmax through its KV cache, with no early stop (as
    runtime.greedy; `generate` would stop at EOS)."""
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    tokens = []
    for _ in range(new_tokens):
        nxt = out.logits[:, -1:].argmax(-1)
        tokens.append(int(nxt))
        out = model(input_ids=nxt, cache=out.cache, use_cache=True)  # transformers 5 names the KV cache `cache`
    return tokens


@torch.no_grad()
def logit_parity(model, tokenizer, gguf_path, new_tokens: int = 20, n_threads: int | None = None,
                 prompts: list[list[int]] | None = None) -> dict:
    """Compare llama.cpp (exact mode) on `gguf_path` with `model` (module docstring)."""
    prompts = prompts or parity_prompts(tokenizer)
    longest = max(len(p) for p in prompts) + new_tokens
    llm = runtime.load(gguf_path, n_ctx=longest, n_threads=n_threads, exact=True)
    per_prompt = []
    for ids in prompts:
        ref = model(torch.tensor([ids])).logits[0].float().numpy()
        got = runtime.logits(llm, ids)
        per_prompt.append({"tokens": len(ids), "max_abs_logit_difference": float(np.abs(ref - got).max()),
                           "argmax_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
                           "greedy_equal": runtime.greedy(llm, ids, new_tokens) == reference_greedy(model, ids, new_tokens)})
    return {"max_abs_logit_difference": max(p["max_abs_logit_difference"] for p in per_prompt),
            "argmax_agreement": min(p["argmax_agreement"] for p in per_prompt),
            "greedy_equal": all(p["greedy_equal"] for p in per_prompt), "new_tokens": new_tokens,
            "settings": "llama.cpp exact mode: f32 KV cache, no flash attention", "prompts": per_prompt}
