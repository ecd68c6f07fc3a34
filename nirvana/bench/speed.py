"""Speed benchmark: NIRVANA-pruned vs dense prefill and decode throughput, against the FLOP ratio.

The pruned models are real surgery (smaller matrices, per-layer widths), scored once on the model's default
calibration and cut at each sparsity; `nirvana.evaluation.speed.compare_speed` times pruned and dense
alternately and reports speed-up efficiency = measured speed-up × FLOP ratio (1.0 = the ideal speed-up).
"""

from __future__ import annotations

import time

import torch


def run_speed_bench(name_or_path: str, sparsities, gamma: float, shapes: list[dict], repeats: int,
                    calibration: dict, score_cache: str | None = None, progress=None) -> dict:
    from ..calibration import build_calibration
    from ..evaluation.speed import compare_speed
    from ..models import load_model
    from ..pruners import compute_plan
    from ..surgery.cut import count_parameters, cut_copy

    for s in sparsities:
        if not 0.0 < float(s) < 1.0:
            raise ValueError(f"speed sparsities must lie in (0, 1), got {s}")
    dense, tokenizer = load_model(name_or_path)
    ids = build_calibration(tokenizer=tokenizer, **calibration)
    rows = []
    jobs = [(float(s), shape) for s in sparsities for shape in shapes]
    pruned_models: dict[float, torch.nn.Module] = {}
    for sparsity, shape in (progress(jobs) if progress else jobs):
        if sparsity not in pruned_models:
            plan = compute_plan(dense, ids, "nirvana", sparsity=sparsity, gamma=gamma, score_cache=score_cache)
            pruned_models[sparsity] = cut_copy(dense, plan)
        pruned = pruned_models[sparsity]
        t0 = time.perf_counter()
        result = compare_speed(pruned, dense, repeats=repeats, **shape)
        rows.append({"sparsity": sparsity, "gamma": gamma, **shape, "repeats": repeats,
                     "params_kept": count_parameters(pruned) / count_parameters(dense),
                     "seconds": time.perf_counter() - t0, **result})
    return {"model": name_or_path, "threads": torch.get_num_threads(), "rows": rows}
