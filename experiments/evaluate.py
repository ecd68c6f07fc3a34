"""Evaluate one model — perplexity, lm-eval zero-shot, speed — and append tidy result rows.

    python -m experiments.evaluate model.path=CHECKPOINT_DIR eval=zeroshot eval.limit=100
    python -m experiments.evaluate model=smollm2_135m eval=ppl

`model.path` (a checkpoint folder, dense or pruned, loaded with trust_remote_code) takes precedence over the
model group's `name_or_path`; a pruned folder's `pruning_plan.json` supplies the pruner, sparsity, γ and
calibration columns. Rows go to `results_file` (appended in one batch when the run ends) and to `rows.jsonl`
in the run folder; the run id is a hash of the resolved config without bookkeeping keys.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from nirvana.evaluation import perplexity as ppl_mod
from nirvana.evaluation import speed as speed_mod
from nirvana.evaluation import zeroshot as zs_mod
from nirvana.models import load_model
from nirvana.plan import PLAN_FILENAME, PruningPlan
from nirvana.results import completed_run_ids, make_row, make_run_id, record_run

BOOKKEEPING = ("results_file", "skip_completed", "progress")  # do not change the numbers → not in the run id


def validate(cfg: DictConfig) -> None:
    """Every check that needs no model, so bad input fails in a second, naming the value and what is accepted."""
    e = cfg.eval
    if not any(e.get(k) for k in ("perplexity", "zeroshot", "speed")):
        raise ValueError(f"eval={e.name} enables no stage: set at least one of perplexity, zeroshot, speed")
    if cfg.model.get("path"):
        folder = Path(cfg.model.path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"model.path={folder}: not a checkpoint folder (no config.json there)")
    if e.get("perplexity"):
        p = e.perplexity
        for s in p.seq_len:
            if int(s) < 2:
                raise ValueError(f"eval.perplexity.seq_len has {s}: every window length must be ≥ 2")
        for d in p.datasets:
            ppl_mod.check_dataset_name(d)
    if e.get("zeroshot"):
        zs_mod.check_tasks(e.zeroshot.tasks, e.zeroshot.suite)
        if e.get("limit") is not None and not e.limit > 0:
            raise ValueError(f"eval.limit must be > 0 or null, got {e.limit}")
    if e.get("speed"):
        s = e.speed
        for k in ("batch_size", "prompt_len", "new_tokens", "repeats"):
            if int(s[k]) < 1:
                raise ValueError(f"eval.speed.{k} must be ≥ 1, got {s[k]}")


def run_identity(cfg: DictConfig) -> tuple[str, dict]:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for k in BOOKKEEPING:
        resolved.pop(k, None)
    return make_run_id(resolved), resolved


def provenance(cfg: DictConfig) -> dict:
    """Model/pruning columns: from the checkpoint's plan when there is one, else a dense model."""
    path = cfg.model.get("path")
    plan_file = Path(path) / PLAN_FILENAME if path else None
    if plan_file is not None and plan_file.is_file():
        plan = PruningPlan.load(plan_file)
        calib = plan.extra.get("calibration") or {}
        return {"model": plan.model, "checkpoint": str(Path(path).resolve()), "pruner": plan.pruner,
                "sparsity": plan.sparsity, "gamma": plan.gamma, "calibration_source": calib.get("source"),
                "calibration_seed": calib.get("seed"), "calibration_selection": calib.get("selection", "none")}
    name = Path(path).name if path else cfg.model.name
    return {"model": name, "checkpoint": str(Path(path).resolve()) if path else cfg.model.name_or_path,
            "pruner": "dense", "sparsity": 0.0, "gamma": None}


def perplexity_rows(cfg, run, model, tokenizer, texts) -> list[dict]:
    p, rows = cfg.eval.perplexity, []
    for dataset in p.datasets:
        for seq_len in p.seq_len:
            t0 = time.perf_counter()
            r = ppl_mod.evaluate_perplexity(model, tokenizer, dataset, int(seq_len), p.batch_size, p.max_texts,
                                   p.max_windows, p.max_tokens, texts=texts[dataset], progress=cfg.progress)
            rows.append(make_row(run, r.dataset, r.metric, r.ppl, seq_len=r.seq_len, limit=r.limit, n=r.n_tokens,
                                 extra={"n_windows": r.n_windows, "nll": r.nll,
                                        "seconds": round(time.perf_counter() - t0, 2)}))
    return rows


def zeroshot_rows(cfg, run, model, tokenizer) -> list[dict]:
    z = cfg.eval.zeroshot
    t0 = time.perf_counter()
    res = zs_mod.evaluate_zeroshot(model, tokenizer, list(z.tasks), z.suite, cfg.eval.limit, z.batch_size,
                                   z.max_length, z.bootstrap_iters)
    extra = res.extra | {"seconds": round(time.perf_counter() - t0, 2)}
    rows = [make_row(run, s.task, s.metric, s.value, s.stderr, limit=res.limit, n=s.n, suite=res.suite,
                     extra=extra | {"lm_eval_task": s.lm_eval_task}) for s in res.scores]
    avg = res.average
    rows.append(make_row(run, avg.task, avg.metric, avg.value, avg.stderr, limit=res.limit, n=len(res.scores),
                         suite=res.suite, extra=extra | {"tasks": [s.task for s in res.scores]}))
    return rows


def speed_rows(cfg, run, model) -> list[dict]:
    s = cfg.eval.speed
    kw = dict(batch_size=s.batch_size, prompt_len=s.prompt_len, new_tokens=s.new_tokens)
    tag, dtag = f"bs{s.batch_size},p{s.prompt_len}", f"bs{s.batch_size},p{s.prompt_len},n{s.new_tokens}"
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


def evaluation_rows(cfg, run, model, tokenizer, texts) -> list[dict]:
    """Every stage `cfg.eval` enables, in protocol order (shared by evaluate, run and recover)."""
    rows = []
    if cfg.eval.get("perplexity"):
        rows += perplexity_rows(cfg, run, model, tokenizer, texts)
    if cfg.eval.get("zeroshot"):
        rows += zeroshot_rows(cfg, run, model, tokenizer)
    if cfg.eval.get("speed"):
        rows += speed_rows(cfg, run, model)
    return rows


def summarize(run_id, prov, rows, seconds, results_file) -> str:
    parts = [f"{r['metric']}={r['value']:.4g}" for r in rows if r["metric"].startswith("ppl/")]
    avg = next((r for r in rows if r["task"] == zs_mod.AVERAGE_TASK), None)
    if avg:
        parts.append(f"zero-shot mean {avg['value']:.4f} over {avg['n']} tasks (limit {avg['limit']})")
    parts += [f"{r['metric'].split('@')[0]}={r['value']:.4g}" for r in rows
              if r["task"] == "speed" and r["metric"].split("@")[0] in ("decode_tok_s", "decode_speedup")]
    what = prov["pruner"] if prov["pruner"] == "dense" else f"{prov['pruner']} s={prov['sparsity']:g}"
    return (f"[evaluate] run {run_id} {prov['model']} ({what}): " + " | ".join(parts)
            + f" | {len(rows)} rows → {results_file} ({seconds:.0f}s)")


def run_evaluate(cfg: DictConfig, out_dir: str | Path) -> list[dict]:
    t_start = time.perf_counter()
    validate(cfg)
    run_id, resolved = run_identity(cfg)
    if cfg.skip_completed and run_id in completed_run_ids(cfg.results_file):
        print(f"[evaluate] run {run_id} already has rows in {cfg.results_file}; skipped")
        return []
    texts = {}  # before the model: a missing dataset (e.g. the hub offline) must not cost a model load
    if cfg.eval.get("perplexity"):
        texts = {d: ppl_mod.load_texts(d, cfg.eval.perplexity.max_texts) for d in cfg.eval.perplexity.datasets}

    m = cfg.model
    model, tokenizer = load_model(m.get("path") or m.name_or_path, m.dtype, m.device, m.device_map)
    prov = provenance(cfg)
    p = next(model.parameters())
    run = {"run_id": run_id, **prov, "dtype": str(p.dtype).replace("torch.", ""), "device": str(p.device)}

    rows = evaluation_rows(cfg, run, model, tokenizer, texts)

    out_dir = Path(out_dir)
    record_run(rows, out_dir, cfg.results_file)
    seconds = time.perf_counter() - t_start
    (out_dir / "summary.json").write_text(json.dumps(
        {"run_id": run_id, "config": resolved, "rows": len(rows), "seconds": round(seconds, 1),
         "results_file": str(Path(cfg.results_file).resolve())}, indent=1, default=str))
    print(summarize(run_id, prov, rows, seconds, cfg.results_file))
    return rows


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_evaluate(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
