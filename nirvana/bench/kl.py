"""KL-probe benchmark: the probe forwards of KL-based selection, each plan run as a physically cut copy vs as a
mask on the dense model (nirvana.probe.plan_forward).

One measurement, in a fresh process: NIRVANA's plans at every γ of `gamma=auto`'s grid (one cached scoring of the
calibration batch), then `kls_to_dense` over all of them on the source's fixed probe (`probe`: build_probe's
window count and length) — what choosing γ for one calibration draw costs. Repeats interleave the two forwards;
reported are medians, the masked/cut time ratio, the largest KL difference between the two and whether both choose
the same γ.
"""

from __future__ import annotations

import statistics
import time

FORWARDS = ("masked", "cut")


def measure_kl(model: str, sparsity: float, forward: str, probe: dict, calibration: dict,
               score_cache: str | None = None) -> dict:
    """One timed `kls_to_dense` over the γ grid's plans; meant for a fresh process (nirvana.bench.isolate)."""
    import torch

    from ..adapters import get_adapter
    from ..allocation import AUTO_GAMMAS
    from ..allocation.gamma import feasible_gammas
    from ..calibration import CalibrationConfig, ProbeConfig, build_calibration
    from ..models import load_model
    from ..probe import build_probe, kls_to_dense
    from ..pruners import compute_plans

    dense, tokenizer = load_model(model, dtype="float32", device="cpu")
    ids = build_calibration(tokenizer=tokenizer, **calibration)
    gammas = feasible_gammas(get_adapter(dense).layers(), sparsity, list(AUTO_GAMMAS))
    plans = compute_plans(dense, ids, "nirvana", sparsity, gammas, score_cache=score_cache)
    c = CalibrationConfig(**calibration, probe=ProbeConfig(**probe))
    probe_ids = build_probe(c, tokenizer).ids
    t0 = time.perf_counter()
    kls = kls_to_dense(dense, plans, probe_ids, c.probe.batch_size, forward=forward)
    seconds = time.perf_counter() - t0
    return {"sparsity": sparsity, "forward": forward, "seconds": seconds, "gammas": gammas, "kls": kls,
            "probe_tokens": int(probe_ids.numel()), "threads": torch.get_num_threads()}


def run_kl_bench(model: str, sparsities, repeats: int, probe: dict, calibration: dict,
                 score_cache: str | None = None, progress=None) -> dict:
    from .isolate import run_isolated

    jobs = [(r, float(s), f) for r in range(repeats) for s in sparsities for f in FORWARDS]
    runs = [run_isolated("kl", model=model, sparsity=s, forward=f, probe=dict(probe),
                         calibration=calibration, score_cache=score_cache)
            for _, s, f in (progress(jobs) if progress else jobs)]
    summary = []
    for s in sorted({float(x) for x in sparsities}):
        mine = {f: [m for m in runs if m["sparsity"] == s and m["forward"] == f] for f in FORWARDS}
        med = {f: statistics.median(m["seconds"] for m in mine[f]) for f in FORWARDS}
        masked, cut = mine["masked"][0], mine["cut"][0]
        choice = {f: m["gammas"][min(range(len(m["kls"])), key=m["kls"].__getitem__)] for f, m in
                  (("masked", masked), ("cut", cut))}
        summary.append({"sparsity": s, "plans": len(cut["gammas"]), "probe_tokens": cut["probe_tokens"],
                        "masked_seconds": med["masked"], "cut_seconds": med["cut"],
                        "speedup": med["masked"] / med["cut"],
                        "max_abs_kl_difference": max(abs(a - b) for a, b in zip(masked["kls"], cut["kls"])),
                        "same_choice": choice["masked"] == choice["cut"], "chosen_gamma": choice["cut"]})
    return {"model": model, "runs": runs, "summary": summary}
