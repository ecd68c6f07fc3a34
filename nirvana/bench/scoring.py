"""Scoring benchmark: peak memory and time of NIRVANA scoring, ours vs the naive full-gradient scorer.

Variants (all the same criterion — the plans are checked identical to the naive one's):
  naive               — nirvana.bench.naive: all gradients held, full [B, T, V] logits (the official schedule)
  ours                — one pass (schedule=manual): gradients reduced and freed as they arrive, LM head applied
                        in vocabulary chunks
  ours+checkpointing  — plus activation checkpointing (one extra forward pass of time)
  ours+micro_batch    — plus exact gradient accumulation over micro-batches of B/4 rows (holds the gradients)
  auto                — nirvana.scoring.NirvanaScorer() as shipped: the schedule chosen by nirvana.scoring.schedule's
                        estimate (its cost — forwards of 3 rows — is inside the measured time)
  reference           — a model's optional `reference_dtype` (e.g. float32 for a bf16 model): the same weights
                        upcast and re-scored (one pass + checkpointing), the arbiter when lower-precision
                        variants disagree with each other (their rounding, not the schedule, then decides the
                        plan); every variant's plan is compared with it unit by unit
Every variant but naive also records what nirvana.scoring.schedule predicted for its schedule, so the estimate is checked
against the measured peak. Each measurement runs in a fresh process (nirvana.bench.isolate); repeats are
interleaved across variants so that a noisy neighbour hits all of them alike; medians are reported.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path

import torch

from .memory import GIB, measure, set_memory_cap
from .models import load_bench_model, random_ids

VARIANTS = {
    "naive": None,
    "ours": {"schedule": "manual"},
    "ours+checkpointing": {"checkpointing": True},
    "ours+micro_batch": {"micro_batch_size": "B/4"},
    "auto": {},
    "reference": {"schedule": "manual", "checkpointing": True},  # in the model's reference_dtype
}
BASELINE = "naive"
# The plan every variant must reproduce: Llama-3.1-8B's headline setting (docs/method.md §2).
PLAN_SPARSITY, PLAN_GAMMA = 0.5, 3.36


def check_variants(variants) -> list[str]:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown scoring variant(s) {unknown}; choose from {list(VARIANTS)}")
    return list(variants)


def make_variant_scorer(variant: str, batch: int, memory_budget_gib: float | None = None):
    from ..scoring.scorers import NirvanaScorer

    options = dict(VARIANTS[variant])
    if options.get("micro_batch_size") == "B/4":
        options["micro_batch_size"] = max(batch // 4, 1)
    return NirvanaScorer(**options, memory_budget_gib=memory_budget_gib)


def plan_digest(plan) -> str:
    """Hash of a plan's kept units: equal digests, identical plans."""
    return hashlib.sha256(json.dumps(plan.kept_units()).encode()).hexdigest()[:16]


def units_differing(a: list, b: list) -> int:
    """Units kept by one plan and pruned by the other (`PruningPlan.kept_units` lists of one model), counted once."""
    return sum(len(set(x) ^ set(y)) for la, lb in zip(a, b, strict=True) for x, y in zip(la, lb, strict=True)) // 2


def measure_scoring(model: str, variant: str, batch: int, seq_len: int, device: str = "cpu",
                    dtype: str = "float32", seed: int = 0, memory_cap_gib: float | None = None,
                    scores_out: str | None = None, memory_budget_gib: float | None = None,
                    reference_dtype: str | None = None) -> dict:
    """One scoring pass of `variant` on a freshly loaded `model`; meant for a fresh process (isolate). The
    `reference` variant upcasts the loaded weights to `reference_dtype` first (the same values, more precision)."""
    from ..adapters import get_adapter
    from ..models import resolve_dtype
    from ..pruners import plan_from_scores
    from .naive import full_gradient_scores

    check_variants([variant])
    t0 = time.perf_counter()
    if variant == "reference" and not reference_dtype:
        raise ValueError("the reference variant needs the model's reference_dtype (e.g. float32)")
    net = load_bench_model(model, device, resolve_dtype(dtype, device))
    if variant == "reference":
        net = net.to(resolve_dtype(reference_dtype, device))
    load_s = time.perf_counter() - t0
    with torch.no_grad():  # page in weights the loader left memory-mapped: `base` then holds the whole model
        for p in net.parameters():
            p.sum()
    adapter = get_adapter(net)
    ids = random_ids(adapter.vocab_size(), batch, seq_len, seed, device)
    set_memory_cap(device, memory_cap_gib)
    result = {"model": model, "variant": variant, "batch": batch, "seq_len": seq_len, "device": device,
              "dtype": reference_dtype if variant == "reference" else dtype, "threads": torch.get_num_threads(), "load_s": round(load_s, 3),
              "memory_cap_gib": memory_cap_gib, "params": sum(p.numel() for p in net.parameters())}
    if variant == BASELINE:
        record, scores = measure(lambda: full_gradient_scores(adapter, ids), device)
    else:
        scorer = make_variant_scorer(variant, batch, memory_budget_gib)
        result["memory_budget_gib"] = memory_budget_gib
        if not scorer.automatic:  # the estimate for the schedule run, made outside the measured region
            schedule = scorer.resolve_schedule(adapter, ids)
            result["predicted_extra_bytes"] = scorer.memory_profile(adapter, ids).memory(schedule, batch)
        record, scores = measure(lambda: scorer.score(adapter, ids), device)
        if scorer.choice is not None:  # auto: what it chose, and its estimate
            schedule = scorer.choice.schedule
            result["predicted_extra_bytes"] = scorer.choice.estimate_bytes
        result["schedule"] = {"micro_batch_size": schedule.micro_batch_size, "checkpointing": schedule.checkpointing}
    if scores is None:  # out of memory
        return {**result, **record}
    plan = plan_from_scores(net, scores, PLAN_SPARSITY, PLAN_GAMMA)
    if scores_out:
        from ..scoring.cache import save_scores

        save_scores(scores_out, f"{model}-{variant}", scores)
        Path(scores_out, f"{model}-{variant}.kept.json").write_text(json.dumps(plan.kept_units()))
    return {**result, **record, "plan_digest": plan_digest(plan), "pruned_groups": plan.pruned_groups,
            "pruned_neurons": plan.pruned_neurons}


def relative_differences(a, b) -> list[torch.Tensor]:
    """|a − b| / |b| per unit, one tensor per layer and module kind (b: the reference scores)."""
    return [(x.double() - y.double()).abs() / y.double().abs().clamp_min(1e-300)
            for xs, ys in ((a.attention, b.attention), (a.mlp, b.mlp)) for x, y in zip(xs, ys, strict=True)]


def max_relative_difference(a, b) -> float:
    return max((float(r.max()) for r in relative_differences(a, b)), default=0.0)


def median_relative_difference(a, b) -> float:
    """The typical unit's disagreement (max_relative_difference is ruled by the smallest scores)."""
    return float(torch.cat(relative_differences(a, b)).median())




def summarize(measurements: list[dict]) -> list[dict]:
    """Median time and peak per (model, variant), with ratios to the naive scorer of the same model."""
    rows = []
    keys = sorted({(m["model"], m["variant"]) for m in measurements}, key=lambda k: (k[0], list(VARIANTS).index(k[1])))
    for model, variant in keys:
        runs = [m for m in measurements if m["model"] == model and m["variant"] == variant]
        ok = [m for m in runs if not m.get("oom")]
        row = {"model": model, "variant": variant, "repeats": len(runs), "oom": len(runs) - len(ok)}
        if ok:
            row |= {
                "seconds_median": statistics.median(m["seconds"] for m in ok),
                "peak_gib_median": statistics.median(m["peak_bytes"] for m in ok) / GIB,
                "extra_gib_median": statistics.median(m["extra_bytes"] for m in ok) / GIB,
                "plan_digest": sorted({m["plan_digest"] for m in ok}),
                "pruned_groups": ok[0]["pruned_groups"], "pruned_neurons": ok[0]["pruned_neurons"],
            }
            if all("predicted_extra_bytes" in m for m in ok):  # the estimate vs what was measured
                predicted = statistics.median(m["base_bytes"] + m["predicted_extra_bytes"] for m in ok)
                row["predicted_peak_gib"] = predicted / GIB
                row["prediction_error"] = predicted / statistics.median(m["peak_bytes"] for m in ok) - 1
                row["schedule"] = ok[0]["schedule"]
        rows.append(row)
    for row in rows:
        ref = next((r for r in rows if r["model"] == row["model"] and r["variant"] == BASELINE
                    and "seconds_median" in r), None)
        if ref and "seconds_median" in row:
            row["time_ratio"] = row["seconds_median"] / ref["seconds_median"]
            row["peak_ratio"] = row["peak_gib_median"] / ref["peak_gib_median"]
            row["extra_ratio"] = row["extra_gib_median"] / ref["extra_gib_median"]
            row["plan_identical"] = row["plan_digest"] == ref["plan_digest"]
    return rows


def run_scoring_bench(models: dict[str, dict], variants, repeats: int, device: str = "cpu", dtype: str = "float32",
                      memory_cap_gib: float | None = None, scores_dir: str | None = None, progress=None) -> dict:
    """`models`: {spec: {"batch": B, "seq_len": T, and optionally its own "dtype", "variants", "repeats",
    "memory_budget_gib" (auto's budget)}}. Returns {"measurements", "summary", "score_differences"}."""
    from .isolate import run_isolated

    variants = check_variants(variants)
    own = {m: check_variants(spec.get("variants") or variants) for m, spec in models.items()}
    for m, spec in models.items():  # the arbiter runs once, after the variants it judges
        own[m] = [v for v in own[m] if v != "reference"]
        if spec.get("reference_dtype"):
            own[m].append("reference")
    jobs = [(r, m, v) for r in range(repeats) for m in models for v in own[m]
            if r < (1 if v == "reference" else int(models[m].get("repeats") or repeats))]
    measurements = []
    for r, model, variant in (progress(jobs) if progress else jobs):
        out = scores_dir if (scores_dir and r == 0) else None
        spec = models[model]
        res = run_isolated("scoring", fixed_mmap=True, model=model, variant=variant, device=device,
                           dtype=spec.get("dtype") or dtype, memory_cap_gib=memory_cap_gib, scores_out=out,
                           batch=spec["batch"], seq_len=spec["seq_len"],
                           memory_budget_gib=spec.get("memory_budget_gib"),
                           reference_dtype=spec.get("reference_dtype") if variant == "reference" else None)
        measurements.append({**res, "repeat": r})
    differences, against_reference = {}, {}
    if scores_dir:
        from ..scoring.cache import load_scores

        for model in models:
            ref = load_scores(scores_dir, f"{model}-{BASELINE}") if BASELINE in own[model] else None
            arbiter = load_scores(scores_dir, f"{model}-reference")
            arbiter_kept = _read_kept(scores_dir, f"{model}-reference")
            for v in own[model]:
                other = load_scores(scores_dir, f"{model}-{v}")
                if other is None or v == "reference":
                    continue
                if ref is not None and v != BASELINE:
                    differences[f"{model}/{v}"] = max_relative_difference(other, ref)
                if arbiter is not None:
                    kept = _read_kept(scores_dir, f"{model}-{v}")
                    against_reference[f"{model}/{v}"] = {
                        "max_rel_score_diff": max_relative_difference(other, arbiter),
                        "median_rel_score_diff": median_relative_difference(other, arbiter),
                        "units_differing": units_differing(kept, arbiter_kept),
                        "units": sum(x.numel() for x in (*arbiter.attention, *arbiter.mlp))}
    return {"measurements": measurements, "summary": summarize(measurements), "score_differences": differences,
            "against_reference": against_reference}


def _read_kept(scores_dir: str, key: str) -> list | None:
    path = Path(scores_dir, f"{key}.kept.json")
    return json.loads(path.read_text()) if path.is_file() else None
