"""The prepared GPU check (`make gpu-check`, experiments/gpu_check.py): NIRVANA on a Llama-3.1-8B-shaped model
within a 24 GiB budget, on one GPU; every step's record goes to results/bench/gpu_check.json.

Nothing is downloaded: the weights are random (memory and speed depend on shapes, not values). Steps:
  1. closed form — the budget for s=0.5, γ=3.36 on this shape; for Llama-3.1-8B it must be 44 groups and
     265,197 neurons (docs/method.md §2), checked before anything is built;
  2. scoring under the cap (torch.cuda.set_per_process_memory_fraction): our scorer with activation
     checkpointing, and without it; an out-of-memory is recorded, not fatal;
  3. the naive full-gradient scorer (nirvana.bench.naive) under the cap, then without it, for its peak;
  4. plan from our scores; the pruned model's parameter count must equal the plan's count, which must equal
     the dense count minus the removed units' parameters; plan vs the naive scores' plan;
  5. dense vs pruned prefill and decode throughput and their FLOP ratios;
  6. each quantization scheme (nirvana.quantization, torchao) applied afresh to the pruned model: size and prefill/
     decode speed against the unquantized pruned model; a scheme torchao cannot run here is recorded, not fatal;
  7. zero-shot scoring speed on the dense model: lm-eval's `hf` vs our `hf-shared-prefix` on requests shaped
     like the nine-task mix (nirvana.bench.zeroshot.backend_speed), with a tokenizer trained on the standard
     library's text — the CPU benchmark's measurement, without its assets — and, in bf16, each one's distance from
     `hf` on the model cast to float32 (`--only zeroshot` runs this step alone).
"""

from __future__ import annotations

import copy
import gc
import logging
import time

import torch

from ..adapters import get_adapter
from ..allocation import budget_for, closed_form_budget
from ..evaluation.speed import compare_speed
from ..models import resolve_dtype
from ..pruners import plan_from_scores
from ..scoring.scorers import NirvanaScorer
from ..surgery.cut import apply_plan, count_parameters
from .memory import GIB, measure, set_memory_cap
from .models import SHAPES, random_ids, random_llama
from .naive import full_gradient_scores
from .scoring import plan_digest
from .zeroshot import backend_speed

log = logging.getLogger(__name__)
# docs/method.md §2, before rounding: what the closed form must give for Llama-3.1-8B at s=0.5, γ=3.36.
EXPECTED_8B = {"groups": 44, "neurons": 265_197}


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def shape_budget(shape: str, sparsity: float, gamma: float) -> dict:
    """The closed-form budget straight from the config numbers (no model): docs/method.md §2's c_a and c_m."""
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
    log.info("scoring %s: %s", name, record)
    return record, scores


QUANT_SCHEMES = ("int8_wo", "w8a8", "w8a8_smoothquant", "int4_wo")
QUANT_SHAPE = {"batch_size": 1, "prompt_len": 512, "new_tokens": 64}


def quantization_step(pruned: torch.nn.Module, calibration_ids: torch.Tensor, repeats: int) -> list[dict]:
    """Every scheme on a fresh copy of the pruned model, timed alternately against it (step 6)."""
    from ..quantization import QuantSpec
    from .quant import measure_scheme

    out = []
    for scheme in QUANT_SCHEMES:
        spec = QuantSpec(scheme=scheme)
        try:
            row = measure_scheme(pruned, spec, calibration_ids, repeats, QUANT_SHAPE)
            out.append({**row, "size_ratio": row["quant_bytes"] / row["float_bytes"]})
        except Exception as e:  # a scheme torchao lacks on this device/dtype is a finding, not a crash
            out.append({"scheme": spec.label(), "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
        log.info("quantization %s", out[-1])
        _free(str(next(pruned.parameters()).device))
    return out


def zeroshot_step(dense: torch.nn.Module, args) -> dict:
    """Step 7: the two lm-eval classes' speed, and (a model not in float32) each one's distance from `hf` on the
    model cast to float32 — whose rounding a difference between them is."""
    from ..tiny import tiny_tokenizer

    try:
        tokenizer = tiny_tokenizer(min(4096, get_adapter(dense).vocab_size()))
        zeroshot = backend_speed(dense, tokenizer, args.zeroshot_docs, args.zeroshot_batch, 2048, args.speed_repeats,
                                 reference_dtype=torch.float32)
    except torch.OutOfMemoryError as e:
        zeroshot = {"oom": True, "error": str(e).splitlines()[0][:200]}
    log.info("zero-shot backends: %s", zeroshot)
    return zeroshot


def run_zeroshot_only(args) -> dict:
    """`--only zeroshot`: step 7 alone, on the dense random model (minutes less than the whole check)."""
    t_start = time.perf_counter()
    dtype = resolve_dtype(args.dtype, args.device)
    zeroshot = zeroshot_step(random_llama(args.shape, args.device, dtype), args)
    return {"shape": args.shape, "device": args.device, "dtype": str(dtype).replace("torch.", ""),
            "device_name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
            "zeroshot": zeroshot, "checks": {}, "seconds": round(time.perf_counter() - t_start, 1)}


def run_check(args) -> dict:
    if getattr(args, "only", None) == "zeroshot":
        return run_zeroshot_only(args)
    t_start = time.perf_counter()
    dtype = resolve_dtype(args.dtype, args.device)
    closed_form = shape_budget(args.shape, args.sparsity, args.gamma)
    if args.shape == "llama-8b-shape" and (args.sparsity, args.gamma) == (0.5, 3.36):
        closed_form["expected"] = EXPECTED_8B
        closed_form["matches_reference"] = closed_form["groups"] == EXPECTED_8B["groups"] and \
            closed_form["neurons"] == EXPECTED_8B["neurons"]
    log.info("closed form: %s", closed_form)
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
    log.info("parameters: %s", params)

    speed = []
    for shape in ({"batch_size": 1, "prompt_len": 512, "new_tokens": 64},
                  {"batch_size": 16, "prompt_len": 512, "new_tokens": 64}):
        try:
            result = compare_speed(model, dense, repeats=args.speed_repeats, **shape)
            speed.append({**shape, **result})
        except torch.OutOfMemoryError as e:
            speed.append({**shape, "oom": True, "error": str(e).splitlines()[0][:200]})
        log.info("speed %s", speed[-1])
    quant = quantization_step(model, ids, args.speed_repeats)
    zeroshot = zeroshot_step(dense, args)
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
        "parameters": params, "speed": speed, "quantization": quant, "zeroshot": zeroshot, "checks": ok, "seconds": round(time.perf_counter() - t_start, 1),
        "summary": {**ok, "scoring": {r["variant"]: ("OOM" if r["oom"] else f'{r["peak_gib"]:.2f} GiB, {r["seconds"]} s')
                                      for r in scoring},
                    "kept_fraction": round(params["kept_fraction"], 4),
                    "speedups": {f'bs{s["batch_size"]}': {k: round(s[k], 3) for k in
                                 ("prefill_speedup", "decode_speedup", "prefill_efficiency", "decode_efficiency")}
                                 for s in speed if not s.get("oom")},
                    "quantization": {q["scheme"]: ("error" if "error" in q else
                                                   {k: round(q[k], 3) for k in ("size_ratio", "prefill_speedup",
                                                                                "decode_speedup")}) for q in quant},
                    "zeroshot_ratio": None if zeroshot.get("oom") else round(zeroshot["ratio"], 2)},
    }
