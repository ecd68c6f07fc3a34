"""LoRA recovery of a pruned checkpoint: evaluate, fine-tune (resumable), merge, save, evaluate again.

    python -m experiments.recover model.path=CHECKPOINT_DIR                          # official (alpaca-cleaned)
    python -m experiments.recover model.path=CHECKPOINT_DIR recovery=lora_offline    # offline stand-in data
    python -m experiments.recover model.path=CHECKPOINT_DIR recovery.max_steps=50    # a short run

The run id is a hash of the resolved config without bookkeeping keys; `work_dir` defaults to
outputs/recover/<run id>, so rerunning the same command resumes training from its last checkpoint (and reuses
the "before" evaluation). The merged model is saved with `save_pruned` (per-layer widths, auto_map, plan), the
plan's `extra["recovery"]` recording the settings, data and outcome. Rows go to `results_file` in one batch
at the end: perplexity (and any other eval stage) with `extra.stage` = "before" / "after", and task
"recovery" rows (train_loss with the loss curve, val_loss, train_seconds, steps).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.evaluate import evaluation_rows, provenance, validate
from nirvana import recovery as rec
from nirvana.checkpoint import save_pruned
from nirvana.evaluation import perplexity as ppl_mod
from nirvana.models import load_model
from nirvana.plan import PLAN_FILENAME, PruningPlan
from nirvana.requirements import check_requirements
from nirvana.results import append_rows, completed_run_ids, iter_rows, make_row, make_run_id, record_run

BOOKKEEPING = ("results_file", "force", "progress", "work_dir", "save_dir")


def run_identity(cfg: DictConfig) -> tuple[str, dict]:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for k in BOOKKEEPING:
        resolved.pop(k, None)
    for k in rec.LoraSettings.BOOKKEEPING:
        resolved["recovery"].pop(k, None)
    return make_run_id(resolved), resolved


def check_config(cfg: DictConfig) -> rec.LoraSettings:
    """Everything checkable without a model: settings, data source, eval protocol, hub when needed."""
    validate(cfg)
    settings = rec.LoraSettings.from_dict(OmegaConf.to_container(cfg.recovery, resolve=True))
    data = cfg.recovery.data
    if data.source not in ("alpaca", "local"):
        raise ValueError(f"recovery.data.source={data.source!r}: choose alpaca (hub) or local (offline stand-in)")
    if data.source == "alpaca":
        check_requirements(hub=True, what=f"recovery on {data.dataset} (recovery.data.source=alpaca)")
    else:
        for name in data.files:
            rec.text_file(name)  # raises, naming the path, when missing
    return settings


def eval_rows(cfg, run, model, tokenizer, texts, stage: str) -> list[dict]:
    rows = evaluation_rows(cfg, run, model, tokenizer, texts)
    for r in rows:
        r["extra"] = {**r["extra"], "stage": stage}
    return rows


def run_recover(cfg: DictConfig, out_dir: str | Path) -> list[dict]:
    t_start = time.perf_counter()
    settings = check_config(cfg)
    run_id, resolved = run_identity(cfg)
    if not cfg.force and run_id in completed_run_ids(cfg.results_file):
        print(f"[recover] run {run_id} already has rows in {cfg.results_file}; skipped (force=true recomputes)")
        return []
    work_dir = Path(cfg.work_dir or Path("outputs") / "recover" / run_id)
    save_dir = Path(cfg.save_dir or work_dir / "checkpoint")
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "config.json").write_text(json.dumps(resolved, indent=1, default=str))

    data_cfg = OmegaConf.to_container(cfg.recovery.data, resolve=True)
    examples = rec.load_examples(**data_cfg)  # before the model: a missing dataset must not cost a load
    train_ex, val_ex = rec.split_train_val(examples, settings.val_set_size, settings.seed)
    texts = {}
    if cfg.eval.get("perplexity"):
        texts = {d: ppl_mod.load_texts(d, cfg.eval.perplexity.max_texts) for d in cfg.eval.perplexity.datasets}

    m = cfg.model
    source = m.get("path") or m.name_or_path
    model, tokenizer = load_model(source, m.dtype, m.device, m.device_map)
    prov = provenance(cfg)
    p = next(model.parameters())
    run = {"run_id": run_id, **prov, "dtype": str(p.dtype).replace("torch.", ""), "device": str(p.device)}

    before_file = work_dir / "rows_before.jsonl"  # a resumed run does not evaluate the input model again
    before = [r for r in iter_rows(before_file) if r.get("run_id") == run_id]
    if not before:
        before = eval_rows(cfg, run, model, tokenizer, texts, "before")
        append_rows(before_file, before)
    else:
        print(f"[recover] reusing the 'before' evaluation in {before_file}")

    merged, result, info = rec.recover(model, tokenizer, train_ex, val_ex, settings, work_dir, cfg.progress)

    plan_file = Path(m.path) / PLAN_FILENAME if m.get("path") else None
    only_local = ("files", "instruction", "input_fraction")  # keep the keys the chosen source used
    data_record = {k: v for k, v in data_cfg.items()
                   if (k not in only_local if data_cfg["source"] == "alpaca" else k != "dataset")}
    record = rec.recovery_record(settings, result, data_record, str(Path(source).resolve()) if m.get("path")
                                 else source, info)
    plan = None
    if plan_file is not None and plan_file.is_file():
        plan = PruningPlan.load(plan_file)
        plan.extra["recovery"] = record
    save_pruned(merged, plan, save_dir, tokenizer)
    (save_dir / "recovery.json").write_text(json.dumps(record | {"history": result.history,
                                                                  "val_history": result.val_history}, indent=1))

    after_run = {**run, "checkpoint": str(save_dir.resolve())}
    after = eval_rows(cfg, after_run, merged, tokenizer, texts, "after")
    extra = {"recovery": cfg.recovery.name, "data_source": data_cfg["source"], "steps": result.steps}
    train_rows = [
        make_row(after_run, "recovery", "train_loss", result.train_loss, n=result.steps,
                 extra=extra | {"first_loss": result.first_loss, "history": result.history}),
        make_row(after_run, "recovery", "train_seconds", result.seconds, n=result.steps,
                 extra=extra | {"resumed_from": result.resumed_from}),
    ]
    if result.val_loss is not None:
        train_rows.append(make_row(after_run, "recovery", "val_loss", result.val_loss, n=result.n_val,
                                   extra=extra | {"best_step": result.best_step,
                                                  "val_history": result.val_history}))
    rows = before + after + train_rows
    out_dir = Path(out_dir)
    record_run(rows, out_dir, cfg.results_file)
    seconds = time.perf_counter() - t_start
    (work_dir / "summary.json").write_text(json.dumps(
        {"run_id": run_id, "checkpoint": str(save_dir), "rows": len(rows), "seconds": round(seconds, 1),
         "result": {k: v for k, v in result.to_dict().items() if "history" not in k}}, indent=1, default=str))
    print(summarize(run_id, prov, before, after, result, save_dir, seconds))
    return rows


def summarize(run_id, prov, before, after, result, save_dir, seconds) -> str:
    parts = []
    after_by_metric = {r["metric"]: r["value"] for r in after}
    for r in before:
        if r["metric"].startswith("ppl/") and r["metric"] in after_by_metric:
            parts.append(f"{r['metric']} {r['value']:.4g} → {after_by_metric[r['metric']]:.4g}")
    loss = f"train loss {result.first_loss:.3f} → {result.train_loss:.3f}" if result.first_loss is not None else ""
    val = f", val loss {result.val_loss:.3f}" if result.val_loss is not None else ""
    what = prov["pruner"] if prov["pruner"] == "dense" else f"{prov['pruner']} s={prov['sparsity']:g}"
    return (f"[recover] run {run_id} {prov['model']} ({what}): " + " | ".join(parts + [loss + val])
            + f" | {result.steps} steps | saved {save_dir} ({seconds:.0f}s)")


@hydra.main(config_path="../conf", config_name="recover", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_recover(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
