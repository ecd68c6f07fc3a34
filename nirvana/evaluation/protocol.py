"""The evaluation protocol as one module: what a run is (its id), what is checked before any model is loaded,
which columns describe the evaluated model, and the result rows of every stage (docs/protocol.md).

Entry points hand in typed configs (nirvana.config):
    run_id, identity = run_identity(config)           # resume key: a hash of what changes the numbers
    check_data(config.eval, model_path)               # the named data exist, before any heavy work
    texts = load_eval_texts(config.eval)              # a missing dataset must not cost a model load
    rows = evaluation_rows(config.eval, run, model, tokenizer, texts)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .. import schema
from ..allocation import AUTO_GAMMAS
from ..calibration import CalibrationConfig, calibration_span, probe_span
from ..pipeline import method_name
from ..probe import HeldOutText
from ..results import make_row, make_run_id
from ..surgery.plan import PLAN_FILENAME, PruningPlan
from ..texts import OFFLINE_SETS, Span
from . import perplexity as ppl_mod
from . import speed as speed_mod
from . import zeroshot as zs_mod
from .config import EvalConfig, PerplexityConfig, SpeedConfig
from .pieces import Pieces

# Config nodes that never change a number: where rows go and how the job behaves (`job:`); the run-level γ counts
# where a pruner reads it (`pruner.gamma`), not as the top-level default.
BOOKKEEPING = ("job", "gamma")
# A dense run is the same whatever pruning a sweep would have applied.
PRUNING_KEYS = ("pruner", "sparsity", "calibration", "measure_kl")


def run_identity(config) -> tuple[str, dict[str, Any]]:
    """(run id, the config it hashes): a typed root config (nirvana.config) without bookkeeping, each field
    counted as its schema says (nirvana.schema: memory schedules never, later options only when set); a dense run
    drops every pruning key; `gamma: auto` is hashed as the list of γ it names (which lives in code)."""
    identity = {k: v for k, v in schema.identity(config).items() if k not in BOOKKEEPING}
    if not getattr(config, "pruner", None) or not config.pruner.prunes:
        for k in PRUNING_KEYS:
            identity.pop(k, None)
    elif identity["pruner"].get("gamma") == "auto":
        identity["pruner"]["gamma"] = list(AUTO_GAMMAS)
    return make_run_id(identity), identity


# --- before the model --------------------------------------------------------------------------------------
def check_data(e: EvalConfig, model_path: str | None = None) -> None:
    """That everything the protocol `e` names exists (names and ranges were checked when `e` was built): the
    checkpoint folder, each perplexity set, the built zero-shot data."""
    if model_path and not (Path(model_path) / "config.json").is_file():
        raise FileNotFoundError(f"model.path={model_path}: not a checkpoint folder (no config.json there)")
    for d in e.perplexity.datasets if e.perplexity else []:
        ppl_mod.check_dataset_name(d)
    if e.zeroshot:
        zs_mod.check_tasks(e.zeroshot.tasks, e.zeroshot.suite)


def eval_spans(e: EvalConfig) -> dict[str, Span]:
    """Every item set the protocol `e` scores, by what names it in the config."""
    spans = {}
    if e.perplexity:
        spans |= {f"eval.perplexity.datasets: {d}": ppl_mod.dataset_span(d) for d in e.perplexity.datasets}
    if e.zeroshot:
        spans |= {f"eval.zeroshot.tasks: {t}": zs_mod.task_span(t, e.zeroshot.suite, e.limit) for t in e.zeroshot.tasks}
    return spans


def check_disjoint(c: CalibrationConfig | None, e: EvalConfig, allow_overlap: bool = False,
                   training: list[str] | None = None) -> dict:
    """Calibration, KL-probe and recovery-training items (`training`: registered text sets) never overlap
    evaluated items, and calibration never overlaps the probe (docs/protocol.md). Raises before any model is
    loaded, naming both sets, unless `allow_overlap`; returns the record rows keep."""
    used: dict[str, Span] = {}
    for name in training or []:  # a registered text set has a span; a plain file's items are unknown
        if name in OFFLINE_SETS:
            used[f"recovery training: {name}"] = OFFLINE_SETS[name].span
    if c is not None and c.source != "tensor":
        for src in c.sources:
            used[f"calibration: {src}"] = calibration_span(src, c.probe.documents, path=c.path, **c.hub)
        used[f"KL probe of {c.sources[0]}"] = probe_span(c.sources[0], c.probe.documents, path=c.path, **c.hub)
    evaluated = eval_spans(e)
    overlaps = [(a, used[a], b, span) for a in used for b, span in evaluated.items() if used[a].overlaps(span)]
    overlaps += [(a, used[a], b, used[b]) for a in used if a.startswith("calibration") for b in used
                 if b.startswith("KL probe") and used[a].overlaps(used[b])]  # training may share calibration text
    described = [f"{a} = {sa} overlaps {b} = {sb}" for a, sa, b, sb in overlaps]
    if described and not allow_overlap:
        raise ValueError("calibration/probe data overlaps what is evaluated: " + "; ".join(described)
                         + ". Use disjoint sets (docs/protocol.md), or allow_overlap=true to run anyway (recorded in "
                         "every row)")
    record = {"calibration_and_probe": {k: str(v) for k, v in used.items()},
              "evaluated": {k: str(v) for k, v in evaluated.items()}}
    if c is not None and c.source == "tensor":
        record["unchecked"] = "calibration from a saved tensor: its text is unknown"
    if described:
        record["overlaps_allowed"] = described
    return record


def mark_overlaps(rows: list[dict], record: dict) -> list[dict]:
    """Rows of a run that was allowed to evaluate on calibration or probe items say so, each of them."""
    if record.get("overlaps_allowed"):
        for r in rows:
            r["extra"] = {**r["extra"], "overlaps_allowed": record["overlaps_allowed"]}
    return rows


def search_heldout(config, texts: dict[str, list[str]]) -> HeldOutText | None:
    """The held-out report of a searched allocation (nirvana.probe.heldout; never used for selection): the first
    `pruner.search.heldout_windows` windows of one of the run's own perplexity sets (`heldout_set`, default the
    first) at `heldout_seq_len` (default its first window length); None without a search, a report or a set."""
    search = getattr(config.pruner, "search", None)
    if getattr(config.pruner, "allocator", None) != "search" or search is None or not search.heldout_windows:
        return None
    p = config.eval.perplexity
    if p is None:
        return None
    name = search.heldout_set or p.datasets[0]
    if name not in p.datasets:
        raise ValueError(f"pruner.search.heldout_set={name!r} is not one of the run's perplexity sets {p.datasets}: "
                         f"the held-out report reads the run's own evaluation text")
    seq_len = int(search.heldout_seq_len or p.seq_len[0])
    return HeldOutText(f"{ppl_mod.dataset_label(name)}@{seq_len}", texts[name], seq_len, search.heldout_windows)


def load_eval_texts(e: EvalConfig) -> dict[str, list[str]]:
    """The perplexity texts of every dataset the protocol names (loaded before the model on purpose)."""
    p = e.perplexity
    return {d: ppl_mod.load_texts(d, p.max_texts) for d in p.datasets} if p else {}


# --- who is evaluated --------------------------------------------------------------------------------------
def checkpoint_plan(path: str | None) -> PruningPlan | None:
    """The plan saved in a checkpoint folder (None: a dense model, or no folder)."""
    plan_file = Path(path) / PLAN_FILENAME if path else None
    return PruningPlan.load(plan_file) if plan_file is not None and plan_file.is_file() else None


def checkpoint_columns(path: str | None, model_name: str, name_or_path: str,
                       plan: PruningPlan | None = None) -> dict[str, Any]:
    """Model and pruning columns of an evaluated model: from its plan when it has one, else a dense model."""
    checkpoint = str(Path(path).resolve()) if path else name_or_path
    if plan is None:
        return {"model": Path(path).name if path else model_name, "checkpoint": checkpoint, "pruner": "dense",
                "sparsity": 0.0, "gamma": None}
    calib = plan.extra.get("calibration") or {}
    choice = plan.extra.get("calibration_choice") or {}
    return {"model": plan.model, "checkpoint": checkpoint, "pruner": method_name(plan.pruner, plan.extra.get("variant")),
            "sparsity": plan.sparsity,
            "gamma": plan.gamma, "calibration_source": choice.get("source", calib.get("source")),
            "calibration_seed": choice.get("seed", calib.get("seed")),
            "calibration_selection": choice.get("selection", calib.get("selection", "none"))}


def placement_columns(model) -> dict[str, str]:
    p = next(model.parameters())
    return {"dtype": str(p.dtype).replace("torch.", ""), "device": str(p.device)}


# --- rows --------------------------------------------------------------------------------------------------
def pruning_rows(run: dict[str, Any], plan: PruningPlan | None, outcome=None) -> list[dict]:
    """What was removed, from the plan (a dense model: nothing): parameters kept of the whole model (with the
    per-layer widths, `PruningPlan.widths`), and the achieved sparsity of attention + MLP next to the requested
    one (the `sparsity` column). With the pruning step's outcome (a nirvana.pipeline.PruneOutcome) also its time
    and calibration KLs."""
    if plan is None:
        return [make_row(run, "pruning", "kept_fraction", 1.0), make_row(run, "pruning", "achieved_sparsity", 0.0)]
    rows = [make_row(run, "pruning", "params_after", plan.params_after),
            make_row(run, "pruning", "kept_fraction", plan.kept_fraction,  # + what the allocation figure needs
                     extra={"widths": plan.widths(), "plan": plan.summary(),
                            "plan_hash": plan.decision_hash()}),
            make_row(run, "pruning", "achieved_sparsity", plan.achieved_sparsity,
                     extra={"requested": plan.sparsity, "prunable_params": plan.prunable_params})]
    if outcome is None:
        return rows
    record = outcome.calibration
    rows.append(make_row(run, "pruning", "prune_seconds", outcome.seconds))
    chosen = record.get("chosen")
    chosen = chosen if isinstance(chosen, list) else [chosen]
    for cand in record.get("candidates") or []:
        rows.append(make_row(run, "calibration", "kl/candidate", cand["kl"],
                             extra={"label": cand["label"], "chosen": cand["label"] in chosen,
                                    "probe": record.get("probe")}))
    stability = record.get("stability")  # selection=kl: how alike the draws' plans are
    for kind in ("attention", "mlp") if stability else ():
        rows.append(make_row(run, "calibration", f"plan_iou/{kind}", stability[kind]["mean"], n=stability["draws"],
                             extra={"min": stability[kind]["min"], "pairs": stability["pairs"]}))
    gammas = plan.extra.get("gamma_choice")  # gamma=auto: each γ's plan on the chosen calibration
    for cand in (gammas or {}).get("candidates", []):
        rows.append(make_row(run, "calibration", "kl/gamma_candidate", cand["kl"],
                             extra={"gamma": cand["gamma"], "chosen": cand["gamma"] == gammas["chosen"]}))
    if outcome.kl_probe is not None:
        rows.append(make_row(run, "calibration", "kl/probe", outcome.kl_probe, extra={"probe": outcome.probe}))
    return rows + search_rows(run, plan.extra.get("search"))


def search_rows(run: dict[str, Any], search: dict | None) -> list[dict]:
    """allocator=search (nirvana.allocation.search): the fitness of the starting plan and of the best found (KL on
    the first `fitness_windows` probe windows), and what the search cost. The per-generation trace — fitness, probe
    forwards and tokens, seconds, the held-out report of each generation's best — rides in the best's extra, so a
    reader of the rows alone sees whether the search over-fits the probe."""
    if not search:
        return []
    trace = search["trace"]
    cost = {k: sum(e.get(k, 0) for e in trace) for k in ("rated", "plan_batches", "tokens", "seconds")}
    common = {"fitness_windows": search["fitness_windows"], "probe": search.get("probe")}
    return [make_row(run, "search", "kl/start", search["start_fitness"], n=search["fitness_windows"], extra=common),
            make_row(run, "search", "kl/best", search["fitness"], n=len(trace) - 1,
                     extra={**common, "heldout": search.get("heldout"), "start": search["start"],
                            "best": search["best"], "trace": trace}),
            make_row(run, "search", "search_seconds", cost.pop("seconds"), n=len(trace) - 1, extra=cost)]


def recovery_rows(run: dict[str, Any], result, extra: dict[str, Any]) -> list[dict]:
    """How LoRA recovery went (nirvana.recovery.RecoveryResult): the final training loss with its curve, the
    seconds it took, and the validation loss where there was a validation set."""
    rows = [make_row(run, "recovery", "train_loss", result.train_loss, n=result.steps,
                     extra=extra | {"first_loss": result.first_loss, "history": result.history}),
            make_row(run, "recovery", "train_seconds", result.seconds, n=result.steps,
                     extra=extra | {"resumed_from": result.resumed_from})]
    if result.val_loss is not None:
        rows.append(make_row(run, "recovery", "val_loss", result.val_loss, n=result.n_val,
                             extra=extra | {"best_step": result.best_step, "val_history": result.val_history}))
    return rows


def quantization_rows(run: dict[str, Any], spec, result: dict) -> list[dict]:
    """How the model was quantized (nirvana.quantization.quantize_stage): its size before and after, and how many
    projections got each treatment (int4 group sizes differ per pruned width)."""
    counts: dict[str, int] = {}
    for decision in result["layers"].values():
        counts[decision] = counts.get(decision, 0) + 1
    extra = {"spec": {"scheme": spec.scheme, "group_size": spec.group_size, "group_rule": spec.group_rule,
                      "alpha": spec.alpha}, "layers": counts}
    return [make_row(run, "quantization", "model_bytes", result["bytes_after"], extra=extra),
            make_row(run, "quantization", "size_ratio", result["bytes_after"] / result["bytes_before"], extra=extra)]


def perplexity_rows(p: PerplexityConfig, run, model, tokenizer, texts, progress: bool = True,
                    pieces: Pieces | None = None) -> list[dict]:
    """One row per (text set, window length); each is a piece of its own (`pieces`: a resumed run reuses them)."""
    def column(dataset, seq_len):
        t0 = time.perf_counter()
        r = ppl_mod.evaluate_perplexity(model, tokenizer, dataset, int(seq_len), p.batch_size, p.max_texts,
                                        p.max_windows, p.max_tokens, texts=texts[dataset], progress=progress)
        return [make_row(run, r.dataset, r.metric, r.ppl, seq_len=r.seq_len, limit=r.limit, n=r.n_tokens,
                         extra={"n_windows": r.n_windows, "nll": r.nll, "window_nll": r.window_nll,
                                "window_tokens": r.n_tokens // r.n_windows,
                                "seconds": round(time.perf_counter() - t0, 2)})]

    pieces = pieces or Pieces(None, run)
    settings = schema.identity(p)
    return [row for dataset in p.datasets for seq_len in p.seq_len
            for row in pieces.get(f"perplexity {dataset}@{seq_len}", settings,
                                  lambda d=dataset, n=seq_len: column(d, n))]


def zeroshot_rows(e: EvalConfig, run, model, tokenizer, pieces: Pieces | None = None) -> list[dict]:
    """The zero-shot suite's rows: one piece (lm-eval batches all of its requests together)."""
    pieces = pieces or Pieces(None, run)
    settings = {"zeroshot": schema.identity(e.zeroshot), "limit": e.limit}
    return pieces.get("zeroshot", settings, lambda: _zeroshot_rows(e, run, model, tokenizer))


def _zeroshot_rows(e: EvalConfig, run, model, tokenizer) -> list[dict]:
    z = e.zeroshot
    t0 = time.perf_counter()
    res = zs_mod.evaluate_zeroshot(model, tokenizer, list(z.tasks), z.suite, e.limit, z.batch_size, z.max_length,
                                   z.bootstrap_iters, lm=z.lm, softmax_dtype=z.softmax_dtype)
    extra = res.extra | {"seconds": round(time.perf_counter() - t0, 2)}
    rows = [make_row(run, s.task, s.metric, s.value, s.stderr, limit=res.limit, n=s.n, suite=res.suite,
                     extra=extra | {"lm_eval_task": s.lm_eval_task, "items": s.items}) for s in res.scores]
    avg = res.average
    rows.append(make_row(run, avg.task, avg.metric, avg.value, avg.stderr, limit=res.limit, n=len(res.scores),
                         suite=res.suite, extra=extra | {"tasks": [s.task for s in res.scores]}))
    return rows


def speed_rows(s: SpeedConfig, run, model) -> list[dict]:
    kw = dict(batch_size=s.batch_size, prompt_len=s.prompt_len, new_tokens=s.new_tokens)
    tag = f"bs{s.batch_size},p{s.prompt_len}"
    dtag = f"{tag},n{s.new_tokens}"
    twin = speed_mod.dense_twin(model) if s.compare_dense and run["pruner"] != "dense" else None
    if twin is None:  # throughput only; a dense model's FLOP ratio is 1 by definition
        r = speed_mod.measure_speed(model, repeats=s.repeats, warmup=s.warmup, **kw)
        out = {"prefill_tok_s": r.prefill_tok_s, "decode_tok_s": r.decode_tok_s}
        if run["pruner"] == "dense":
            out |= {"prefill_flop_ratio": 1.0, "decode_flop_ratio": 1.0}
    else:
        out = speed_mod.compare_speed(model, twin, repeats=s.repeats, warmup=s.warmup, **kw)
    return [make_row(run, "speed", f"{k}@{dtag if 'decode' in k else tag}", v, seq_len=s.prompt_len,
                     n=s.repeats, extra={"new_tokens": s.new_tokens}) for k, v in out.items()]


def evaluation_rows(e: EvalConfig, run: dict[str, Any], model, tokenizer, texts, progress: bool = True,
                    pieces: Pieces | None = None) -> list[dict]:
    """Every stage the protocol `e` enables, in protocol order. `pieces`: the finished pieces of this run kept by an
    interrupted launch (nirvana.evaluation.pieces); the speed stage is always measured afresh."""
    rows = []
    if e.perplexity:
        rows += perplexity_rows(e.perplexity, run, model, tokenizer, texts, progress, pieces)
    if e.zeroshot:
        rows += zeroshot_rows(e, run, model, tokenizer, pieces)
    if e.speed:
        rows += speed_rows(e.speed, run, model)
    return rows


def run_label(recipe, quant=None, recovery=None) -> str:
    """What a run is, in the words of its rows (`recipe`: a pipeline.PruneRecipe, None for the dense model):
    method, sparsity, γ, and the stages after pruning."""
    parts = ["dense"] if recipe is None else [method_name(recipe.pruner, recipe.variant), f"s={recipe.sparsity:g}"]
    if recipe is not None and recipe.gamma is not None:
        parts.append(f"γ={recipe.gamma}")
    parts += [f"recovery={recovery.name}"] if recovery is not None else []
    parts += [f"quant={quant.label()}"] if quant is not None else []
    return " ".join(parts)


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
