"""Zero-shot benchmark: our shared-prefix lm-eval model class (`hf-shared-prefix`) vs lm-eval's own `hf`, same
model, tasks, items, batch size and context length.

Each measurement is a fresh process that loads the model, wraps it with one class and runs lm-eval's
`simple_evaluate` on the nine-task mix; it records the wall time of the whole evaluation and the time spent
inside the model class's `loglikelihood` (the part a backend decides: the rest is lm-eval building tasks and
aggregating, the same for both). Repeats alternate between the two classes; medians and ratios are reported.
The two must give the same answers: the benchmark records every task's metric for both and the largest
difference between their per-item log-likelihoods.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from ..evaluation.zeroshot import (
    LMS,
    TASK_METRICS,
    check_tasks,
    lm_eval_task_name,
    sample_loglikelihoods,
    task_manager,
)


def _items(samples: list[dict], metric: str) -> dict[int, dict]:
    """doc id → the log-likelihood of each of its requests (one per choice), the item's metric, and each
    request's (context, continuation) strings (to re-score a disagreement in float64)."""
    return {int(s["doc_id"]): {"ll": sample_loglikelihoods(s), "metric": float(s[metric]),
                               "args": [list(a[:2]) for a in s["arguments"]]} for s in samples}


def measure_zeroshot(lm: str, model_dir: str, tasks: list[str], limit: int, batch_size: int, max_length: int,
                     samples_out: str | None = None) -> dict:
    """One evaluation with lm-eval model class `lm`; meant for a fresh process (nirvana.bench.isolate)."""
    import lm_eval
    import torch

    from ..evaluation.zeroshot import wrap_model
    from ..models import load_model

    model, tokenizer = load_model(model_dir, dtype="float32", device="cpu")
    wrapped, _ = wrap_model(model, tokenizer, batch_size, max_length, lm)
    inner, spent = wrapped.loglikelihood, []

    def timed(requests, *args, **kwargs):
        t0 = time.perf_counter()
        out = inner(requests, *args, **kwargs)
        spent.append((time.perf_counter() - t0, len(requests)))
        return out

    wrapped.loglikelihood = timed
    names = [lm_eval_task_name(t, "local") for t in tasks]
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=wrapped, tasks=names, task_manager=task_manager("local"), limit=limit,
                                  log_samples=True, bootstrap_iters=0)
    seconds = time.perf_counter() - t0
    if samples_out:
        Path(samples_out).write_text(json.dumps({t: _items(out["samples"][n], TASK_METRICS[t])
                                                 for t, n in zip(tasks, names)}))
    return {"lm": lm, "seconds": seconds, "loglikelihood_seconds": sum(s for s, _ in spent),
            "requests": sum(n for _, n in spent), "threads": torch.get_num_threads(),
            "scores": {t: out["results"][n][f"{TASK_METRICS[t]},none"] for t, n in zip(tasks, names)}}


def count_requests(tasks: list[str], limit: int | None) -> int:
    """Loglikelihood requests lm-eval builds for `tasks` (local suite) at `limit`."""
    total = 0
    for task in task_manager("local").load([lm_eval_task_name(t, "local") for t in tasks])["tasks"].values():
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        total += len(task.instances)
    return total


def run_zeroshot_bench(model_dir: str, tasks, limit: int, batch_size: int, max_length: int, repeats: int,
                       scratch: str, progress=None) -> dict:
    from .isolate import run_isolated

    tasks = check_tasks(list(tasks), "local")
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"zero-shot benchmark model {model_dir}: no config.json (run `make assets`)")
    runs: dict[str, list[dict]] = {lm: [] for lm in LMS}
    jobs = [(r, lm) for r in range(repeats) for lm in reversed(LMS)]  # hf first, then ours, alternating
    for r, lm in (progress(jobs) if progress else jobs):
        samples = f"{scratch}/{lm}.json" if r == 0 else None
        runs[lm].append(run_isolated("zeroshot", lm=lm, model_dir=model_dir, tasks=tasks, limit=limit,
                                     batch_size=batch_size, max_length=max_length, samples_out=samples))
    agreement = compare_items(*(json.loads(Path(f"{scratch}/{lm}.json").read_text()) for lm in LMS))
    med = {lm: {k: statistics.median(m[k] for m in rs) for k in ("seconds", "loglikelihood_seconds")}
           for lm, rs in runs.items()}
    n = runs["hf"][0]["requests"]
    scores = {lm: rs[0]["scores"] for lm, rs in runs.items()}
    return {
        "model": model_dir, "tasks": tasks, "limit": limit, "batch_size": batch_size, "max_length": max_length,
        "requests": n, "runs": runs, "medians": med,
        "requests_per_s": {lm: n / m["loglikelihood_seconds"] for lm, m in med.items()},
        "ratio_loglikelihood": med["hf"]["loglikelihood_seconds"] / med["hf-shared-prefix"]["loglikelihood_seconds"],
        "ratio_end_to_end": med["hf"]["seconds"] / med["hf-shared-prefix"]["seconds"],
        "scores": scores, "same_scores": scores["hf"] == scores["hf-shared-prefix"],
        "max_abs_loglikelihood_difference": agreement["max_abs_loglikelihood_difference"],
    }


def compare_items(stock: dict, ours: dict, tolerance: float = 1e-4) -> dict:
    """Per-item agreement of two runs' logged items: the largest log-likelihood difference, every item whose
    metric differs (a near tie that flipped), with both log-likelihood lists, and every request whose
    log-likelihoods differ by more than `tolerance` (largest first)."""
    worst, flips, over, requests = 0.0, [], [], 0
    for task, items in stock.items():
        for doc, a in items.items():
            b = ours[task][doc]
            for choice, (x, y) in enumerate(zip(a["ll"], b["ll"], strict=True)):
                requests += 1
                difference = abs(x - y)
                worst = max(worst, difference)
                if difference > tolerance:
                    over.append({"task": task, "doc": int(doc), "choice": choice, "difference": difference,
                                 "hf": x, "hf-shared-prefix": y, "args": a["args"][choice] if "args" in a else None})
            if a["metric"] != b["metric"]:
                flips.append({"task": task, "doc": int(doc), "hf": a["ll"], "hf-shared-prefix": b["ll"]})
    return {"max_abs_loglikelihood_difference": worst, "flips": flips, "tolerance": tolerance,
            "over_tolerance": sorted(over, key=lambda r: -r["difference"]), "requests": requests,
            "items": sum(len(items) for items in stock.values())}


def reference_loglikelihoods(model_dir: str, pairs: list[list[str]], max_length: int) -> dict:
    """float64 log-likelihoods of (context, continuation) pairs, tokenised exactly as lm-eval's `hf` does, one
    unpadded forward each: the arbiter when the two fp32 classes disagree beyond rounding of short sums.
    Meant for a fresh process (nirvana.bench.isolate)."""
    import torch
    from lm_eval.models.huggingface import HFLM

    from ..evaluation.zeroshot import lm_eval_backend
    from ..models import load_model

    model, tokenizer = load_model(model_dir, dtype="float32", device="cpu")
    encoder = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=max_length,
                   backend=lm_eval_backend(model))
    model = model.double().eval()
    out = []
    for context, continuation in pairs:
        ctx, cont = encoder._encode_pair(context, continuation)
        ids = torch.tensor([(ctx + cont)[-(max_length + 1):][:-1]])
        with torch.no_grad():
            logprobs = model(input_ids=ids).logits[0, -len(cont):].log_softmax(-1)
        out.append({"loglikelihood": logprobs.gather(-1, torch.tensor(cont)[:, None]).sum().item(),
                    "context_tokens": len(ctx), "continuation_tokens": len(cont)})
    return {"references": out}


def arbitrate(over: list[dict], model_dir: str, max_length: int, most: int = 20) -> list[dict]:
    """The `most` largest disagreements re-scored in float64 (fresh process): how far each class is from it."""
    from .isolate import run_isolated

    over = over[:most]
    if not over:
        return []
    refs = run_isolated("reference", model_dir=model_dir, pairs=[r["args"] for r in over],
                        max_length=max_length)["references"]
    return [{k: v for k, v in r.items() if k != "args"} | ref
            | {"hf_error": abs(r["hf"] - ref["loglikelihood"]),
               "hf-shared-prefix_error": abs(r["hf-shared-prefix"] - ref["loglikelihood"])}
            for r, ref in zip(over, refs, strict=True)]


def run_exactness_bench(model_dir: str, tasks, limit: int, sparsity: float, max_length: int, scratch: str,
                        progress=None, tolerance: float = 1e-4) -> dict:
    """Both model classes on the dense model and on a NIRVANA-pruned copy, `limit` items of every task: per-item
    log-likelihood differences, per-task metrics, every flipped item, and the requests that differ by more than
    `tolerance`, re-scored in float64."""
    import sys

    from .. import paths
    from .isolate import run_isolated, run_timed

    pruned = f"{scratch}/pruned"
    run_timed([sys.executable, "-m", "experiments.prune", f"model.name_or_path={model_dir}", "pruner=nirvana",
               f"sparsity={sparsity}", f"save_dir={pruned}", f"hydra.run.dir={scratch}/prune-run"],
              "pruning the exactness benchmark's model", cwd=str(paths.REPO_ROOT))
    out = {}
    jobs = [(label, path, lm) for label, path in (("dense", model_dir), ("pruned", pruned)) for lm in LMS]
    for label, path, lm in (progress(jobs) if progress else jobs):
        run_isolated("zeroshot", lm=lm, model_dir=path, tasks=list(tasks), limit=limit, batch_size=8,
                     max_length=max_length, samples_out=f"{scratch}/{label}-{lm}.json")
        if lm == LMS[-1]:
            items = [json.loads(Path(f"{scratch}/{label}-{x}.json").read_text()) for x in ("hf", "hf-shared-prefix")]
            metrics = [{t: sum(i["metric"] for i in v.values()) / len(v) for t, v in side.items()} for side in items]
            agreement = compare_items(*items, tolerance=tolerance)
            agreement["over_tolerance"] = arbitrate(agreement["over_tolerance"], path, max_length)
            out[label] = agreement | {"metrics": dict(zip(("hf", "hf-shared-prefix"), metrics)),
                                      "same_metrics": metrics[0] == metrics[1]}
    return {"tasks": list(tasks), "limit": limit, "pruned_sparsity": sparsity, "models": out}


def mixed_requests(n_docs: int) -> list[tuple[str, str]]:
    """(context, continuation) pairs shaped like the nine-task mix, from the standard library's own text (no
    assets: the GPU machine has none): per document a 4-choice question (ARC, OpenBookQA, SciQ, HellaSwag), a
    2-choice goal (PIQA), a passage with a yes/no question (BoolQ), a WinoGrande pair (two sentence starts,
    one shared ending) and a LAMBADA passage (one continuation)."""
    from ..tiny import pydoc_text

    words = pydoc_text().split()
    span = lambda start, n: " ".join(words[start % (len(words) - n):][:n])  # noqa: E731
    pairs = []
    for d in range(n_docs):
        at = 997 * d
        question = f"Question: {span(at, 40)}\nAnswer:"
        pairs += [(question, " " + span(at + 50 + 9 * k, 4 + 2 * k)) for k in range(4)]
        goal = f"Goal: {span(at + 100, 15)}\nSolution:"
        pairs += [(goal, " " + span(at + 120 + 25 * k, 20)) for k in range(2)]
        pairs += [(f"{span(at + 200, 150)}\nQuestion: {span(at + 360, 10)}?\nAnswer:", c) for c in (" yes", " no")]
        start = span(at + 400, 20)
        pairs += [(f"{start} {option}", " " + span(at + 430, 8)) for option in (span(at + 440, 2), span(at + 445, 2))]
        pairs.append((span(at + 500, 80), " " + span(at + 580, 1)))
    return pairs


def backend_speed(model, tokenizer, n_docs: int, batch_size: int, max_length: int, repeats: int,
                  reference_dtype=None) -> dict:
    """lm-eval's `hf` vs `hf-shared-prefix` on one in-memory model (any device and dtype): the same requests,
    batch size and context length, repeats alternating; median seconds of `_loglikelihood_tokens` (the part the
    class decides), requests/s, ratio, and how far their per-request log-likelihoods are apart. With a
    `reference_dtype` other than the model's (a bf16 model, float32): how far each is from `hf` in that dtype
    (`reference_gaps`), which says whose rounding a difference between the two is — with lm-eval's default
    softmax dtype (the model's, as timed) and with float32 (our protocol's)."""
    import torch
    from lm_eval.models.huggingface import HFLM

    from ..evaluation.shared_prefix import SharedPrefixLM

    common = dict(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    classes = {"hf": HFLM, "hf-shared-prefix": SharedPrefixLM}
    lms = {name: cls(**common) for name, cls in classes.items()}
    requests = [((c, x), *lms["hf"]._encode_pair(c, x)) for c, x in mixed_requests(n_docs)]
    seconds, answers = {name: [] for name in lms}, {}
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    for _ in range(repeats):
        for name, lm in lms.items():
            sync()
            t0 = time.perf_counter()
            answers[name] = lm._loglikelihood_tokens(requests, disable_tqdm=True)
            sync()
            seconds[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(s) for name, s in seconds.items()}
    apart = answer_gaps(answers["hf-shared-prefix"], answers["hf"])
    out = {"requests": len(requests), "batch_size": batch_size, "repeats": repeats, "median_seconds": med,
           "requests_per_s": {name: len(requests) / s for name, s in med.items()},
           "ratio": med["hf"] / med["hf-shared-prefix"], "max_abs_loglikelihood_difference": apart["max_abs"],
           "same_greedy": apart["same_greedy"] == 1.0}
    if reference_dtype is not None and next(model.parameters()).dtype != reference_dtype:
        for name, cls in classes.items():  # our protocol's setting (eval.zeroshot.softmax_dtype), untimed
            answers[f"{name}, softmax float32"] = cls(**common, softmax_dtype="float32")._loglikelihood_tokens(
                requests, disable_tqdm=True)
        out["reference"] = reference_gaps(model, requests, answers, reference_dtype, common)
    return out


def reference_gaps(model, requests, answers: dict, dtype, hflm_args: dict) -> dict:
    """Each backend's per-request distance from lm-eval's `hf` on the same model cast to `dtype`: max and mean
    absolute log-likelihood difference and greedy agreement. The model is cast in place (no second copy in memory)
    and every tensor is given back its own dtype after, exactly (bf16 → float32 → bf16 loses nothing)."""
    from itertools import chain

    from lm_eval.models.huggingface import HFLM

    tensors = [t for t in chain(model.parameters(), model.buffers()) if t.is_floating_point()]
    before = [t.dtype for t in tensors]
    for t in tensors:
        t.data = t.data.to(dtype)
    try:
        reference = HFLM(**hflm_args)._loglikelihood_tokens(requests, disable_tqdm=True)
    finally:
        for t, d in zip(tensors, before, strict=True):
            t.data = t.data.to(d)
    return {"dtype": str(dtype).replace("torch.", ""),
            **{name: answer_gaps(got, reference) for name, got in answers.items()}}


def answer_gaps(got: list, reference: list) -> dict:
    """Per-request distance of (log-likelihood, is-greedy) answers from a reference's: max and mean absolute
    log-likelihood difference, and the share of requests with the same greedy verdict."""
    d = [abs(a[0] - r[0]) for a, r in zip(got, reference, strict=True)]
    same = sum(a[1] == r[1] for a, r in zip(got, reference, strict=True))
    return {"max_abs": max(d), "mean_abs": statistics.fmean(d), "same_greedy": same / len(d)}
