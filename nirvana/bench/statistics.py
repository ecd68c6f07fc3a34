"""Statistics benchmark: the activation-statistics pass of Wanda-sp and FLAP, layer-wise vs whole-model forwards.

Schedules (the same statistics, hence the same plans — checked):
  layerwise — nirvana.scoring.statistics: the calibration batch embedded once and carried block by block (Wanda-sp:
              each block run again after masking, for the next block's inputs)
  forward   — nirvana.bench.naive_statistics: whole-model forwards with hooks; Wanda-sp needs one truncated
              forward per layer (quadratic in depth), FLAP one forward
Each measurement runs in a fresh process on the real SmolLM2 with the official 32 × 128 calibration batch;
repeats are interleaved; medians and ratios are reported.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time

SCHEDULES = ("layerwise", "forward")
METHODS = ("wanda_sp", "flap")


def measure_statistics(method: str, schedule: str, sparsity: float = 0.2, stats_out: str | None = None) -> dict:
    """One statistics pass; meant for a fresh process (nirvana.bench.isolate)."""
    import torch

    from ..adapters import get_adapter
    from ..calibration import build_calibration
    from ..models import load_model
    from ..scoring.statistics import layerwise_channel_stats
    from .naive_statistics import forward_statistics, wanda_sp_truncated

    model, tokenizer = load_model("builtin:smollm2-135m-instruct", dtype="float32", device="cpu")
    ids = build_calibration("lambada_tail", tokenizer, n_samples=32, seq_len=128, seed=12, join=4)
    adapter = get_adapter(model)
    t0 = time.perf_counter()
    if method == "wanda_sp":
        from ..baselines.wanda_sp import wanda_sp_plan

        kept = wanda_sp_plan(adapter, ids, sparsity)[0] if schedule == "layerwise" else \
            wanda_sp_truncated(adapter, ids, sparsity)
        seconds = time.perf_counter() - t0
        return {"method": method, "schedule": schedule, "seconds": seconds, "threads": torch.get_num_threads(),
                "digest": hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16]}
    stats = layerwise_channel_stats(adapter, ids) if schedule == "layerwise" else forward_statistics(adapter, ids)
    seconds = time.perf_counter() - t0
    if stats_out:
        from safetensors.torch import save_file

        save_file({f"{i}.{k}.{field}": getattr(s, field) for (i, k), s in stats.items()
                   for field in ("baseline", "fluctuation", "square_sum")}, stats_out)
    return {"method": method, "schedule": schedule, "seconds": seconds, "threads": torch.get_num_threads()}


def run_statistics_bench(repeats: int, scratch: str, progress=None) -> dict:
    from safetensors.torch import load_file

    from .isolate import run_isolated

    runs = []
    jobs = [(r, m, s) for r in range(repeats) for m in METHODS for s in SCHEDULES]
    for r, method, schedule in (progress(jobs) if progress else jobs):
        out = f"{scratch}/{method}-{schedule}.safetensors" if method == "flap" and r == 0 else None
        runs.append(run_isolated("statistics", method=method, schedule=schedule, stats_out=out))
    summary = []
    for method in METHODS:
        med = {s: statistics.median(m["seconds"] for m in runs if m["method"] == method and m["schedule"] == s)
               for s in SCHEDULES}
        row = {"method": method, **{f"{s}_seconds": med[s] for s in SCHEDULES},
               "speedup": med["forward"] / med["layerwise"]}
        if method == "wanda_sp":
            digests = {m["digest"] for m in runs if m["method"] == method}
            row["plans_identical"] = len(digests) == 1
        else:
            a, b = (load_file(f"{scratch}/flap-{s}.safetensors") for s in SCHEDULES)
            row["max_abs_difference"] = max(float((a[k] - b[k]).abs().max()) for k in a)
            row["identical"] = row["max_abs_difference"] == 0.0
        summary.append(row)
    return {"runs": runs, "summary": summary}
