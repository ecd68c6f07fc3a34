"""The prepared GPU check: NIRVANA on a Llama-3.1-8B-shaped model within a 24 GiB budget, on one GPU.

    python -m experiments.gpu_check                     # on a CUDA GPU: 8B shape, bf16, 24 GiB cap (budget: 8 min on an H200)
    python -m experiments.gpu_check --shape llama-tiny-shape --device cpu --dtype float32 --out /tmp/gpu_check.json

Nothing is downloaded: the weights are random (memory and speed depend on shapes, not values). Steps, each
recorded in results/bench/gpu_check.json:
  1. closed form — the budget for s=0.5, γ=3.36 on this shape; for Llama-3.1-8B it must be 44 groups and
     265,197 neurons (REFERENCE.md §2), checked before anything is built;
  2. scoring under the cap (torch.cuda.set_per_process_memory_fraction): our scorer with activation
     checkpointing, and without it; an out-of-memory is recorded, not fatal;
  3. the naive full-gradient scorer (nirvana.bench.naive) under the cap, then without it, for its peak;
  4. plan from our scores; the pruned model's parameter count must equal the plan's count, which must equal
     the dense count minus the removed units' parameters; plan vs the naive scores' plan;
  5. dense vs pruned prefill and decode throughput and their FLOP ratios.
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from pathlib import Path

import torch

from nirvana.adapters import get_adapter
from nirvana.allocation import budget_for, closed_form_budget
from nirvana.atomic import write_json
from nirvana.bench.memory import GIB, measure, set_memory_cap
from nirvana.bench.models import SHAPES, random_ids, random_llama
from nirvana.bench.naive import full_gradient_scores
from nirvana.bench.scoring import plan_digest
from nirvana.bench.summary import provenance
from nirvana.evaluation.speed import compare_speed
from nirvana.models import resolve_dtype
from nirvana.pruning import plan_from_scores
from nirvana.scoring import NirvanaScorer
from nirvana.surgery import apply_plan, count_parameters

# REFERENCE.md §2, before rounding: what the closed form must give for Llama-3.1-8B at s=0.5, γ=3.36.
EXPECTED_8B = {"groups": 44, "neurons": 265_197}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llama-8b-shape", choices=sorted(SHAPES))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--cap-gib", type=float, default=24.0, help="memory cap for scoring (CUDA only)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--gamma", type=float, default=3.36)
    p.add_argument("--batch", type=int, default=32, help="calibration rows (official: 32)")
    p.add_argument("--seq-len", type=int, default=128, help="calibration length (official: 128)")
    p.add_argument("--speed-repeats", type=int, default=5)
    p.add_argument("--out", default="results/bench/gpu_check.json")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here (use --device cpu with a small --shape to try it)")
    if not 0 < args.sparsity < 1 or args.gamma <= 0 or args.batch < 1 or args.seq_len < 2:
        p.error("need 0 < sparsity < 1, gamma > 0, batch ≥ 1, seq-len ≥ 2")
    return args


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def shape_budget(shape: str, sparsity: float, gamma: float) -> dict:
    """The closed-form budget straight from the config numbers (no model): REFERENCE.md §2's c_a and c_m."""
    c = SHAPES[shape]
    d, hd, n_kv = c["hidden_size"], c["head_dim"], c["num_key_value_heads"]
    n_rep = c["num_attention_heads"] // n_kv
    b = closed_form_budget(c["num_hidden_layers"], n_kv, 2 * hd * (n_rep + 1) * d, c["intermediate_size"], 3 * d,
                           sparsity, gamma)
    return {"groups": b.k_attention, "neurons": b.k_mlp}


def timed_scoring(name: str, fn, device: str, cap_gib: float | None) -> tuple[dict, object]:
    _free(device)
    set_memory_cap(device, cap_gib)
    try:
        measured, scores = measure(fn, device)
    finally:
        set_memory_cap(device, None)
    record = {"variant": name, "cap_gib": cap_gib if device.startswith("cuda") else None, **measured}
    if not record["oom"]:
        record |= {"seconds": round(record["seconds"], 3), "peak_gib": record["peak_bytes"] / GIB}
    print(f"[gpu_check] scoring {name}: {record}", flush=True)
    return record, scores


def run_check(args) -> dict:
    t_start = time.perf_counter()
    dtype = resolve_dtype(args.dtype, args.device)
    closed_form = shape_budget(args.shape, args.sparsity, args.gamma)
    if args.shape == "llama-8b-shape" and (args.sparsity, args.gamma) == (0.5, 3.36):
        closed_form["expected"] = EXPECTED_8B
        closed_form["matches_reference"] = closed_form["groups"] == EXPECTED_8B["groups"] and \
            closed_form["neurons"] == EXPECTED_8B["neurons"]
    print(f"[gpu_check] closed form: {closed_form}", flush=True)
    model = random_llama(args.shape, args.device, dtype)
    adapter = get_adapter(model)
    budget = budget_for(adapter.layers(), args.sparsity, args.gamma)  # the same closed form, from the adapter
    closed_form["adapter_agrees"] = (budget.k_attention, budget.k_mlp) == (closed_form["groups"], closed_form["neurons"])
    ids = random_ids(adapter.vocab_size(), args.batch, args.seq_len, 0, args.device)
    params_dense = count_parameters(model)
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB

    scoring, scores = [], {}
    for name, fn, cap in (
        ("ours+checkpointing", lambda: NirvanaScorer(checkpointing=True).score(adapter, ids), args.cap_gib),
        ("ours", lambda: NirvanaScorer().score(adapter, ids), args.cap_gib),
        ("naive", lambda: full_gradient_scores(adapter, ids), args.cap_gib),
        ("naive (no cap)", lambda: full_gradient_scores(adapter, ids), None),
    ):
        record, s = timed_scoring(name, fn, args.device, cap)
        scoring.append(record)
        if s is not None:
            scores.setdefault(name.split(" ")[0], s)

    ours = scores.get("ours+checkpointing") or scores.get("ours")
    if ours is None:
        raise RuntimeError(f"our scorer did not fit in {args.cap_gib} GiB: {scoring}")
    plan = plan_from_scores(model, ours, args.sparsity, args.gamma, model_name=args.shape)
    digest = plan_digest(plan)
    naive_digest = (plan_digest(plan_from_scores(model, scores["naive"], args.sparsity, args.gamma))
                    if "naive" in scores else None)
    del scores
    _free(args.device)

    dense = copy.deepcopy(model)
    apply_plan(model, plan)
    params_pruned = count_parameters(model)
    layers = get_adapter(dense).layers()
    removed = plan.pruned_groups * layers[0].attention.unit_cost + plan.pruned_neurons * layers[0].mlp.unit_cost
    params = {"dense": params_dense, "pruned": params_pruned, "plan_params_after": plan.params_after,
              "dense_minus_removed_units": params_dense - removed, "kept_fraction": params_pruned / params_dense,
              "pruned_groups": plan.pruned_groups, "pruned_neurons": plan.pruned_neurons,
              "consistent": params_pruned == plan.params_after == params_dense - removed}
    print(f"[gpu_check] parameters: {params}", flush=True)

    speed = []
    for shape in ({"batch_size": 1, "prompt_len": 512, "new_tokens": 64},
                  {"batch_size": 16, "prompt_len": 512, "new_tokens": 64}):
        try:
            result = compare_speed(model, dense, repeats=args.speed_repeats, **shape)
            speed.append({**shape, **result})
        except torch.OutOfMemoryError as e:
            speed.append({**shape, "oom": True, "error": str(e).splitlines()[0][:200]})
        print(f"[gpu_check] speed {speed[-1]}", flush=True)
    del dense
    _free(args.device)

    ok = {"scored_under_cap": any(r["variant"].startswith("ours") and not r["oom"] for r in scoring),
          "parameters_consistent": params["consistent"],
          "closed_form_matches_reference": closed_form.get("matches_reference"),
          "adapter_budget_agrees": closed_form["adapter_agrees"]}
    return {
        "shape": args.shape, "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "dtype": str(dtype).replace("torch.", ""), "sparsity": args.sparsity, "gamma": args.gamma,
        "calibration": [args.batch, args.seq_len], "weights_gib": weights_gib, "closed_form": closed_form,
        "scoring": scoring, "plan_digest": digest, "naive_plan_digest": naive_digest,
        "plan_identical_to_naive": None if naive_digest is None else digest == naive_digest,
        "parameters": params, "speed": speed, "checks": ok, "seconds": round(time.perf_counter() - t_start, 1),
        "summary": {**ok, "scoring": {r["variant"]: ("OOM" if r["oom"] else f'{r["peak_gib"]:.2f} GiB, {r["seconds"]} s')
                                      for r in scoring},
                    "kept_fraction": round(params["kept_fraction"], 4),
                    "speedups": {f'bs{s["batch_size"]}': {k: round(s[k], 3) for k in
                                 ("prefill_speedup", "decode_speedup", "prefill_efficiency", "decode_efficiency")}
                                 for s in speed if not s.get("oom")}},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run_check(args)
    doc = {"section": "gpu_check", "config": vars(args), "result": result,
           "provenance": provenance("python -m experiments.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv))}
    write_json(Path(args.out), doc)
    print(f"[gpu_check] {result['checks']} → {args.out} ({result['seconds']} s)")
    failed = [k for k, v in result["checks"].items() if v is False]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
