"""llama.cpp speed benchmark: NIRVANA-pruned vs dense GGUFs, prefill and decode tokens/s, against the FLOP ratio.

The dense model and NIRVANA-pruned copies (real surgery, scored once on the model's default calibration) are exported
as `deci` GGUFs of each type and run by llama.cpp (llama-cpp-python) in its deployment settings — f16 KV cache, flash
attention (nirvana.deploy.runtime) — at each thread count. Per (type, threads) every model is loaded once and the
models are timed in turn, one pass each per repeat (dense, then each pruned copy, then again), so a load change on a
shared machine hits all alike; medians of the repeats are reported.
  - prefill tokens/s = prompt_len / time of one llama_decode over a fresh prompt (random ids);
  - decode tokens/s  = new_tokens / time of new_tokens single-token steps on that cache (fixed random ids: speed
    does not depend on the tokens, and a sampler's work is not the model's).
FLOP ratio and efficiency are the transformers speed section's (nirvana.evaluation.speed: the adapter's FLOPs per
token; efficiency = measured speed-up × FLOP ratio, 1.0 = the ideal speed-up), so both runtimes are judged alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _one_pass(llm, prompt: list[int], steps: list[int]) -> tuple[float, float]:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    for token in steps:
        llm.eval([token])
    return t1 - t0, time.perf_counter() - t1


def time_models(llms: dict, prompt_len: int, new_tokens: int, repeats: int, warmup: int = 1,
                seed: int = 0) -> dict[str, dict[str, float]]:
    """{name: {prefill_tok_s, decode_tok_s (medians), prefill_s, decode_s (every repeat)}} of llama_cpp.Llama models
    timed in turn (module docstring)."""
    if prompt_len < 1 or new_tokens < 1 or repeats < 1:
        raise ValueError(f"prompt_len, new_tokens and repeats must be ≥ 1, got {prompt_len}, {new_tokens}, {repeats}")
    rng = np.random.default_rng(seed)
    vocab = min(llm.n_vocab() for llm in llms.values())
    prompt, steps = rng.integers(0, vocab, prompt_len).tolist(), rng.integers(0, vocab, new_tokens).tolist()
    for llm in llms.values():
        for _ in range(warmup):
            _one_pass(llm, prompt, steps[:4])
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in llms}
    for _ in range(repeats):
        for name, llm in llms.items():
            times[name].append(_one_pass(llm, prompt, steps))
    return {name: {"prefill_tok_s": prompt_len / statistics.median(a for a, _ in t),
                   "decode_tok_s": new_tokens / statistics.median(b for _, b in t),
                   "prefill_s": [a for a, _ in t], "decode_s": [b for _, b in t]} for name, t in times.items()}


def run_llamacpp_bench(name_or_path: str, sparsities, gamma: float, types, threads, shape: dict, repeats: int,
                       calibration: dict, score_cache: str | None = None, progress=None) -> dict:
    from ..calibration import build_calibration
    from ..deploy import check_gguf_type, export_gguf, runtime
    from ..evaluation.speed import flop_ratios, speedup_efficiency
    from ..models import load_model
    from ..pruners import compute_plan
    from ..surgery.cut import count_parameters, cut_copy

    for t in types:
        check_gguf_type(t)
    for s in sparsities:
        if not 0.0 < float(s) < 1.0:
            raise ValueError(f"llamacpp sparsities must lie in (0, 1), got {s}")
    if not threads or any(int(n) < 1 for n in threads):
        raise ValueError(f"llamacpp.threads must be thread counts ≥ 1, got {threads}")
    runtime.require()
    prompt_len, new_tokens = int(shape["prompt_len"]), int(shape["new_tokens"])
    dense, tokenizer = load_model(name_or_path, dtype="float32", device="cpu")
    ids = build_calibration(tokenizer=tokenizer, **calibration)
    models = {0.0: dense}
    for s in sparsities:
        plan = compute_plan(dense, ids, "nirvana", sparsity=float(s), gamma=gamma, score_cache=score_cache)
        models[float(s)] = cut_copy(dense, plan)
    ratios = {s: flop_ratios(m, dense, prompt_len, new_tokens) for s, m in models.items() if s}
    rows, files = [], {}
    jobs = [(t, int(n)) for t in types for n in threads]
    with tempfile.TemporaryDirectory(prefix="nirvana-bench-gguf-") as scratch:
        for gguf_type, n_threads in (progress(jobs) if progress else jobs):
            for s, model in models.items():
                if (s, gguf_type) not in files:
                    files[(s, gguf_type)] = export_gguf(model, tokenizer, Path(scratch) / f"s{s}-{gguf_type}.gguf",
                                                        gguf_type)
            llms = {s: runtime.load(files[(s, gguf_type)].path, n_ctx=prompt_len + new_tokens, n_threads=n_threads,
                                    exact=False, logits_all=False) for s in models}
            t0 = time.perf_counter()
            timed = time_models(llms, prompt_len, new_tokens, repeats)
            seconds = time.perf_counter() - t0
            del llms
            dense_t = timed[0.0]
            for s in models:
                if not s:
                    continue
                pre, dec = ratios[s]
                row = {"gguf_type": gguf_type, "threads": n_threads, "sparsity": s, "gamma": gamma,
                       "prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats,
                       "params_kept": count_parameters(models[s]) / count_parameters(dense),
                       "gguf_bytes": files[(s, gguf_type)].bytes, "dense_gguf_bytes": files[(0.0, gguf_type)].bytes,
                       "fallbacks": len(files[(s, gguf_type)].fallbacks),
                       "dense_fallbacks": len(files[(0.0, gguf_type)].fallbacks),
                       "prefill_tok_s": timed[s]["prefill_tok_s"], "decode_tok_s": timed[s]["decode_tok_s"],
                       "dense_prefill_tok_s": dense_t["prefill_tok_s"], "dense_decode_tok_s": dense_t["decode_tok_s"],
                       "prefill_flop_ratio": pre, "decode_flop_ratio": dec, "seconds": seconds,
                       "prefill_s": timed[s]["prefill_s"], "decode_s": timed[s]["decode_s"],
                       "dense_prefill_s": dense_t["prefill_s"], "dense_decode_s": dense_t["decode_s"]}
                row["prefill_speedup"] = row["prefill_tok_s"] / row["dense_prefill_tok_s"]
                row["decode_speedup"] = row["decode_tok_s"] / row["dense_decode_tok_s"]
                row["prefill_efficiency"] = speedup_efficiency(row["prefill_speedup"], pre)
                row["decode_efficiency"] = speedup_efficiency(row["decode_speedup"], dec)
                rows.append(row)
    return {"model": name_or_path, "llama_cpp_version": runtime.version(), "torch_threads": torch.get_num_threads(),
            "settings": "deployment: f16 KV cache, flash attention", "rows": rows}
