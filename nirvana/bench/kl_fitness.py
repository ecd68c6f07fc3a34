"""KL-fitness benchmark: what choosing (calibration draw, γ) by KL on the probe costs before and after the shared
dense reference and the coarse-to-fine γ search (nirvana.probe.reference, nirvana.allocation.gamma.rate_gammas).

One measurement, in a fresh process, rates NIRVANA's plans of `draws` calibration draws (scored once through the
score cache, outside the timing) on the source's fixed probe, the way `recipe=nirvana_auto` does it:

- `old`: per draw, one `kls_to_dense` over the plans at every feasible γ of the `gamma=auto` grid, with the dense
  model's probe outputs recomputed in every call and the per-token KL over the whole batch at once (what a run did
  before the reference, the coarse-to-fine search and the chunked KL existed; the numbers are the same bit for bit);
- `new`: a dense reference built once in a fresh folder (its dense forwards timed, as a cold run pays them) and read
  back for every later rating, γ rated coarse to fine (`gamma_search=coarse`).

Both then choose the (draw, γ) of lowest KL. Repeats interleave the two paths; reported are medians, the old/new time
ratio, the plan-batch forwards each ran and whether both chose the same draw and γ with the same KL.
"""

from __future__ import annotations

import statistics
import tempfile
import time

PATHS = ("old", "new")


def measure_kl_fitness(model: str, sparsity: float, path: str, draws: int, probe: dict, calibration: dict,
                       score_cache: str | None = None) -> dict:
    """One timed (draw, γ) choice by `path`; meant for a fresh process (nirvana.bench.isolate)."""
    import torch

    from ..adapters import get_adapter
    from ..allocation import AUTO_GAMMAS
    from ..allocation.gamma import eligible_gammas, feasible_gammas, rate_gammas
    from ..calibration import CalibrationConfig, ProbeConfig, draw_candidates
    from ..models import load_model
    from ..probe import DenseReference, build_probe, kl, kls_to_dense
    from ..pruners import compute_plans

    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "old":  # this process only (a fresh one per measurement): the arithmetic before the chunked KL
        kl.KL_TOKEN_CHUNK = None
    dense, tokenizer = load_model(model, dtype="float32", device="cpu")
    c = CalibrationConfig(**calibration, selection="kl", candidates=draws, probe=ProbeConfig(**probe))
    gammas = feasible_gammas(get_adapter(dense).layers(), sparsity, list(AUTO_GAMMAS))
    pool = draw_candidates(c, tokenizer)
    plans = [compute_plans(dense, cand.ids, "nirvana", sparsity, gammas, score_cache=score_cache) for cand in pool]
    probe_ids, batch = build_probe(c, tokenizer).ids, c.probe.batch_size
    batches = -(-probe_ids.shape[0] // batch)
    rated = 0

    with tempfile.TemporaryDirectory(prefix="nirvana-bench-reference-") as folder:
        reference = DenseReference(dense, folder) if path == "new" else None

        def rate(draw_plans, idx):
            nonlocal rated
            rated += len(idx)
            return kls_to_dense(dense, [draw_plans[i] for i in idx], probe_ids, batch, reference=reference)

        t0 = time.perf_counter()
        kls = [rate_gammas(gammas, eligible_gammas(p, sparsity, None), lambda idx, p=p: rate(p, idx),
                           "grid" if path == "old" else "coarse") for p in plans]
        seconds = time.perf_counter() - t0
        dense_batches = len(pool) * batches if reference is None else reference.computed
    draw, g = min(((d, i) for d in range(len(pool)) for i in range(len(gammas)) if kls[d][i] is not None),
                  key=lambda di: kls[di[0]][di[1]])
    return {"sparsity": sparsity, "path": path, "seconds": seconds, "draws": [cand.label for cand in pool],
            "gammas": gammas, "kls": kls, "chosen": {"draw": pool[draw].label, "gamma": gammas[g], "kl": kls[draw][g]},
            "plans_rated": rated, "plan_batch_forwards": rated * batches, "dense_batch_forwards": dense_batches,
            "probe_tokens": int(probe_ids.numel()), "threads": torch.get_num_threads()}


def run_kl_fitness_bench(model: str, sparsities, draws: int, repeats: int, probe: dict, calibration: dict,
                         score_cache: str | None = None, progress=None) -> dict:
    from .isolate import run_isolated

    jobs = [(r, float(s), p) for r in range(repeats) for s in sparsities for p in PATHS]
    runs = [run_isolated("kl_fitness", model=model, sparsity=s, path=p, draws=draws, probe=dict(probe),
                         calibration=dict(calibration), score_cache=score_cache)
            for _, s, p in (progress(jobs) if progress else jobs)]
    return {"model": model, "draws": draws, "runs": runs, "summary": summarize(runs)}


def summarize(runs: list[dict]) -> list[dict]:
    """Per sparsity: median seconds of each path, old/new ratio, forwards, and whether the choices agree."""
    summary = []
    for s in sorted({m["sparsity"] for m in runs}):
        mine = {p: [m for m in runs if m["sparsity"] == s and m["path"] == p] for p in PATHS}
        med = {p: statistics.median(m["seconds"] for m in mine[p]) for p in PATHS}
        old, new = mine["old"][0], mine["new"][0]
        summary.append({
            "sparsity": s, "draws": len(old["draws"]), "gammas": len(old["gammas"]), "probe_tokens": old["probe_tokens"],
            "old_seconds": med["old"], "new_seconds": med["new"], "speedup": med["old"] / med["new"],
            "old_plan_batches": old["plan_batch_forwards"], "new_plan_batches": new["plan_batch_forwards"],
            "old_dense_batches": old["dense_batch_forwards"], "new_dense_batches": new["dense_batch_forwards"],
            "same_choice": (old["chosen"]["draw"], old["chosen"]["gamma"]) == (new["chosen"]["draw"],
                                                                                new["chosen"]["gamma"]),
            "same_kl": old["chosen"]["kl"] == new["chosen"]["kl"], "old_chosen": old["chosen"],
            "new_chosen": new["chosen"]})
    return summary
