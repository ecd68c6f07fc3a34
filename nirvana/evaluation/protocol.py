"""The evaluation protocol as one module: what a run is (its id), what is checked before any model is loaded,
which columns describe the evaluated model, and the result rows of every stage (docs/protocol.md).

Entry points hand in plain dicts (a resolved Hydra config, or one written by hand):
    run_id, identity = run_identity(config)           # resume key: a hash of what changes the numbers
    validate_eval(config["eval"], model_path)         # names the bad value, before any heavy work
    texts = load_eval_texts(config["eval"])           # a missing dataset must not cost a model load
    rows = evaluation_rows(config["eval"], run, model, tokenizer, texts)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..plan import PLAN_FILENAME, PruningPlan
from ..results import make_row, make_run_id
from . import perplexity as ppl_mod
from . import speed as speed_mod
from . import zeroshot as zs_mod

# Config nodes that never change a number: where rows go and how the job behaves (conf/*.yaml `job:`).
BOOKKEEPING = ("job", "hydra")
# A dense run is the same whatever pruning a sweep would have applied.
PRUNING_KEYS = ("pruner", "sparsity", "gamma", "calibration", "measure_kl")


def run_identity(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(run id, the config it hashes): the resolved config without bookkeeping; γ counts where the pruner
    reads it (`pruner.gamma`), not as the top-level default; a dense run drops every pruning key."""
    identity = {k: v for k, v in config.items() if k not in (*BOOKKEEPING, "gamma")}
    if (identity.get("pruner") or {}).get("name") == "dense":
        for k in PRUNING_KEYS:
            identity.pop(k, None)
    return make_run_id(identity), identity


# --- before the model --------------------------------------------------------------------------------------
def validate_eval(e: dict[str, Any], model_path: str | None = None) -> None:
    """Every check of an evaluation config that needs no model, naming the value and what is accepted."""
    if not any(e.get(k) for k in ("perplexity", "zeroshot", "speed")):
        raise ValueError(f"eval={e.get('name')} enables no stage: set at least one of perplexity, zeroshot, speed")
    if model_path and not (Path(model_path) / "config.json").is_file():
        raise FileNotFoundError(f"model.path={model_path}: not a checkpoint folder (no config.json there)")
    if e.get("perplexity"):
        p = e["perplexity"]
        for s in p["seq_len"]:
            if int(s) < 2:
                raise ValueError(f"eval.perplexity.seq_len has {s}: every window length must be ≥ 2")
        for d in p["datasets"]:
            ppl_mod.check_dataset_name(d)
    if e.get("zeroshot"):
        zs_mod.check_tasks(e["zeroshot"]["tasks"], e["zeroshot"]["suite"])
        if e.get("limit") is not None and not e["limit"] > 0:
            raise ValueError(f"eval.limit must be > 0 or null, got {e['limit']}")
    if e.get("speed"):
        for k in ("batch_size", "prompt_len", "new_tokens", "repeats"):
            if int(e["speed"][k]) < 1:
                raise ValueError(f"eval.speed.{k} must be ≥ 1, got {e['speed'][k]}")


def load_eval_texts(e: dict[str, Any]) -> dict[str, list[str]]:
    """The perplexity texts of every dataset the protocol names (loaded before the model on purpose)."""
    p = e.get("perplexity")
    return {d: ppl_mod.load_texts(d, p["max_texts"]) for d in p["datasets"]} if p else {}


# --- who is evaluated --------------------------------------------------------------------------------------
def checkpoint_columns(path: str | None, model_name: str, name_or_path: str) -> dict[str, Any]:
    """Model and pruning columns of a checkpoint: from its plan when it has one, else a dense model."""
    plan_file = Path(path) / PLAN_FILENAME if path else None
    if plan_file is not None and plan_file.is_file():
        plan = PruningPlan.load(plan_file)
        calib = plan.extra.get("calibration") or {}
        return {"model": plan.model, "checkpoint": str(Path(path).resolve()), "pruner": plan.pruner,
                "sparsity": plan.sparsity, "gamma": plan.gamma, "calibration_source": calib.get("source"),
                "calibration_seed": calib.get("seed"), "calibration_selection": calib.get("selection", "none")}
    return {"model": Path(path).name if path else model_name,
            "checkpoint": str(Path(path).resolve()) if path else name_or_path, "pruner": "dense", "sparsity": 0.0,
            "gamma": None}


def placement_columns(model) -> dict[str, str]:
    p = next(model.parameters())
    return {"dtype": str(p.dtype).replace("torch.", ""), "device": str(p.device)}


# --- rows --------------------------------------------------------------------------------------------------
def pruning_rows(run: dict[str, Any], outcome) -> list[dict]:
    """Rows of a pruning step (a nirvana.pipeline.PruneOutcome): parameters kept, time, calibration KLs."""
    plan, record = outcome.plan, outcome.calibration
    rows = [make_row(run, "pruning", "params_after", plan.params_after),
            make_row(run, "pruning", "kept_fraction", plan.kept_fraction),
            make_row(run, "pruning", "prune_seconds", outcome.seconds)]
    chosen = record.get("chosen")
    chosen = chosen if isinstance(chosen, list) else [chosen]
    for cand in record.get("candidates") or []:
        rows.append(make_row(run, "calibration", "kl/candidate", cand["kl"],
                             extra={"label": cand["label"], "chosen": cand["label"] in chosen}))
    if outcome.kl_probe is not None:
        rows.append(make_row(run, "calibration", "kl/probe", outcome.kl_probe, extra={"probe": outcome.probe}))
    return rows


def perplexity_rows(p: dict[str, Any], run, model, tokenizer, texts, progress: bool = True) -> list[dict]:
    rows = []
    for dataset in p["datasets"]:
        for seq_len in p["seq_len"]:
            t0 = time.perf_counter()
            r = ppl_mod.evaluate_perplexity(model, tokenizer, dataset, int(seq_len), p["batch_size"], p["max_texts"],
                                            p["max_windows"], p["max_tokens"], texts=texts[dataset], progress=progress)
            rows.append(make_row(run, r.dataset, r.metric, r.ppl, seq_len=r.seq_len, limit=r.limit, n=r.n_tokens,
                                 extra={"n_windows": r.n_windows, "nll": r.nll,
                                        "seconds": round(time.perf_counter() - t0, 2)}))
    return rows


def zeroshot_rows(e: dict[str, Any], run, model, tokenizer) -> list[dict]:
    z = e["zeroshot"]
    t0 = time.perf_counter()
    res = zs_mod.evaluate_zeroshot(model, tokenizer, list(z["tasks"]), z["suite"], e.get("limit"), z["batch_size"],
                                   z["max_length"], z["bootstrap_iters"])
    extra = res.extra | {"seconds": round(time.perf_counter() - t0, 2)}
    rows = [make_row(run, s.task, s.metric, s.value, s.stderr, limit=res.limit, n=s.n, suite=res.suite,
                     extra=extra | {"lm_eval_task": s.lm_eval_task}) for s in res.scores]
    avg = res.average
    rows.append(make_row(run, avg.task, avg.metric, avg.value, avg.stderr, limit=res.limit, n=len(res.scores),
                         suite=res.suite, extra=extra | {"tasks": [s.task for s in res.scores]}))
    return rows


def speed_rows(s: dict[str, Any], run, model) -> list[dict]:
    kw = dict(batch_size=s["batch_size"], prompt_len=s["prompt_len"], new_tokens=s["new_tokens"])
    tag = f"bs{s['batch_size']},p{s['prompt_len']}"
    dtag = f"{tag},n{s['new_tokens']}"
    twin = speed_mod.dense_twin(model) if s["compare_dense"] and run["pruner"] != "dense" else None
    if twin is None:  # throughput only; a dense model's FLOP ratio is 1 by definition
        r = speed_mod.measure_speed(model, repeats=s["repeats"], warmup=s["warmup"], **kw)
        out = {"prefill_tok_s": r.prefill_tok_s, "decode_tok_s": r.decode_tok_s}
        if run["pruner"] == "dense":
            out |= {"prefill_flop_ratio": 1.0, "decode_flop_ratio": 1.0}
    else:
        out = speed_mod.compare_speed(model, twin, repeats=s["repeats"], warmup=s["warmup"], **kw)
    return [make_row(run, "speed", f"{k}@{dtag if 'decode' in k else tag}", v, seq_len=s["prompt_len"],
                     n=s["repeats"], extra={"new_tokens": s["new_tokens"]}) for k, v in out.items()]


def evaluation_rows(e: dict[str, Any], run: dict[str, Any], model, tokenizer, texts, progress: bool = True) -> list[dict]:
    """Every stage the protocol `e` enables, in protocol order."""
    rows = []
    if e.get("perplexity"):
        rows += perplexity_rows(e["perplexity"], run, model, tokenizer, texts, progress)
    if e.get("zeroshot"):
        rows += zeroshot_rows(e, run, model, tokenizer)
    if e.get("speed"):
        rows += speed_rows(e["speed"], run, model)
    return rows


def summary_line(run: dict[str, Any], rows: list[dict], seconds: float, results_file) -> str:
    """The one line every run ends with: its id, model, headline numbers and where the rows went."""
    parts = [f"{r['metric']}={r['value']:.4g}" for r in rows if r["metric"].startswith("ppl/")]
    avg = next((r for r in rows if r["task"] == zs_mod.AVERAGE_TASK), None)
    if avg:
        parts.append(f"zero-shot mean {avg['value']:.4f} over {avg['n']} tasks (limit {avg['limit']})")
    parts += [f"{r['metric'].split('@')[0]}={r['value']:.4g}" for r in rows
              if r["task"] == "speed" and r["metric"].split("@")[0] in ("decode_tok_s", "decode_speedup")]
    kept = next((r["value"] for r in rows if r["metric"] == "kept_fraction"), None)
    if kept is not None:
        parts.append(f"params kept {100 * kept:.1f}%")
    what = run["pruner"] if run["pruner"] == "dense" else f"{run['pruner']} s={run['sparsity']:g}"
    return (f"run {run['run_id']} {run['model']} ({what}): " + " | ".join(parts)
            + f" | {len(rows)} rows → {results_file} ({seconds:.0f}s)")
