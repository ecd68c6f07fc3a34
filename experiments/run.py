"""One experiment run — calibrate, prune, evaluate — ending in tidy result rows.

    python -m experiments.run model=smollm2_135m pruner=nirvana sparsity=0.2 eval=quick
    python -m experiments.run -m experiment=demo        # a sweep defined in conf/experiment/demo.yaml

Resume: a run's id is a hash of its resolved config (bookkeeping keys and, for the dense model, the
pruning keys left out). Its rows are appended to `results_file` in ONE atomic batch at the very end, so an
id present there means the run finished; a rerun of a sweep skips those (`force=true` recomputes) and a
killed run leaves nothing partial. The run folder holds the resolved config (.hydra/), plan, calibration
ids, rows and a summary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.evaluate import evaluation_rows, validate
from experiments.evaluate import summarize as summarize_eval
from nirvana.allocation import validate_hyperparameters
from nirvana.calibration import choose_calibration, kl_to_dense
from nirvana.checkpoint import save_pruned
from nirvana.evaluation import perplexity as ppl_mod
from nirvana.loggers import make_logger
from nirvana.models import load_model
from nirvana.pruning import CALIBRATION_FREE, PRUNERS, compute_plan
from nirvana.requirements import check_requirements, is_hub_model
from nirvana.results import completed_run_ids, make_row, make_run_id, record_run
from nirvana.surgery import apply_plan

BOOKKEEPING = ("results_file", "force", "progress", "logger", "save_checkpoint", "preflight", "requires",
               "score_cache")


def run_identity(cfg: DictConfig) -> tuple[str, dict]:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for k in BOOKKEEPING:
        resolved.pop(k, None)
    if cfg.pruner.name == "dense":  # one dense run per model and protocol, however the sweep is written
        for k in ("pruner", "sparsity", "calibration", "measure_kl"):
            resolved.pop(k, None)
    return make_run_id(resolved), resolved


def check_config(cfg: DictConfig) -> None:
    """Everything checkable without a model, so typos and missing GPUs/hub fail in a second."""
    req = cfg.get("requires") or {}
    needs_hub = bool(req.get("hub")) or is_hub_model(cfg.model.name_or_path)
    check_requirements(gpu=bool(req.get("gpu")), hub=needs_hub, what=f"model {cfg.model.name} ({cfg.model.name_or_path})"
                       if not req else "this experiment")
    validate(cfg)  # the evaluation protocol
    p = cfg.pruner
    if p.name != "dense":
        if p.name not in PRUNERS:
            raise ValueError(f"unknown pruner {p.name!r}; choose dense or one of {sorted(PRUNERS)}")
        validate_hyperparameters(cfg.sparsity, p.gamma, p.get("round_to", 8))


def prune_in_memory(cfg, model, tokenizer, out_dir: Path):
    """Calibrate, plan, (measure KL), cut. Returns the provenance columns and the pruning rows' payload."""
    p = cfg.pruner
    options = {k: v for k, v in OmegaConf.to_container(p, resolve=True).items() if k not in ("name", "gamma")}
    c = OmegaConf.to_container(cfg.calibration, resolve=True)

    def plan_for(ids, extra=None):
        return compute_plan(model, ids, p.name, sparsity=cfg.sparsity, gamma=p.gamma, model_name=cfg.model.name,
                            extra=extra, score_cache=cfg.get("score_cache"), **options)

    t0 = time.perf_counter()
    ids, chosen, probe_ids = None, {"selection": "none", "source": None, "seed": None}, None
    if p.name not in CALIBRATION_FREE:
        choice = choose_calibration(model, tokenizer, plan_for, want_probe=cfg.measure_kl, **c)
        ids, chosen, probe_ids = choice.ids, choice.record, choice.probe_ids
        torch.save(ids, out_dir / "calibration.pt")
    elif cfg.measure_kl and c["source"] != "tensor":  # no calibration to stay disjoint from
        probe_ids = choose_calibration(model, tokenizer, None, want_probe=True, **c).probe_ids
    plan = plan_for(ids, {"calibration": c, "calibration_choice": chosen})
    seconds = time.perf_counter() - t0
    payload = [("pruning", "params_after", plan.params_after, {}),
               ("pruning", "kept_fraction", plan.kept_fraction, {}),
               ("pruning", "prune_seconds", seconds, {})]
    for cand in chosen.get("candidates") or []:
        if chosen["selection"] == "kl":
            mark = " ← chosen" if cand["label"] == chosen["chosen"] else ""
            print(f"[calibration] {cand['label']}: KL {cand['kl']:.5f}{mark}")
        payload.append(("calibration", "kl/candidate", cand["kl"],
                        {"label": cand["label"], "chosen": cand["label"] in (chosen["chosen"] if isinstance(
                            chosen["chosen"], list) else [chosen["chosen"]])}))
    if probe_ids is not None:
        probe = {"batch_size": 16, **(c.get("probe") or {})}
        payload.append(("calibration", "kl/probe", kl_to_dense(model, plan, probe_ids, probe["batch_size"]),
                        {"probe": probe}))
    plan.save(out_dir)
    apply_plan(model, plan)
    prov = {"pruner": p.name, "sparsity": cfg.sparsity, "gamma": p.gamma,
            "calibration_source": chosen.get("source") if ids is not None else None,
            "calibration_seed": chosen.get("seed") if ids is not None else None,
            "calibration_selection": chosen.get("selection") if ids is not None else None}
    print(f"[run] {plan.summary()} ({seconds:.0f}s)")
    return prov, payload, plan


def run_experiment(cfg: DictConfig, out_dir: str | Path) -> list[dict]:
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_config(cfg)
    run_id, resolved = run_identity(cfg)
    if cfg.preflight:
        print(f"[run] preflight ok: {cfg.model.name} ({cfg.model.name_or_path}), run id {run_id}")
        return []
    if not cfg.force and run_id in completed_run_ids(cfg.results_file):
        print(f"[run] {run_id} ({cfg.model.name}, {cfg.pruner.name}, s={cfg.sparsity}) already complete in "
              f"{cfg.results_file}; skipped (force=true recomputes)")
        return []
    texts = {}
    if cfg.eval.get("perplexity"):  # before the model: a missing dataset must not cost a model load
        texts = {d: ppl_mod.load_texts(d, cfg.eval.perplexity.max_texts) for d in cfg.eval.perplexity.datasets}

    logger = make_logger(**OmegaConf.to_container(cfg.logger, resolve=True))
    logger.log_config(resolved)
    m = cfg.model
    model, tokenizer = load_model(m.name_or_path, m.dtype, m.device, m.device_map)
    param = next(model.parameters())
    run = {"run_id": run_id, "model": m.name, "checkpoint": m.name_or_path, "pruner": "dense", "sparsity": 0.0,
           "gamma": None, "calibration_source": None, "calibration_seed": None, "calibration_selection": None,
           "dtype": str(param.dtype).replace("torch.", ""), "device": str(param.device)}
    rows = []
    if cfg.pruner.name != "dense":
        prov, payload, plan = prune_in_memory(cfg, model, tokenizer, out_dir)
        run.update(prov)
        rows += [make_row(run, task, metric, value, extra=extra) for task, metric, value, extra in payload]
        if cfg.save_checkpoint:
            run["checkpoint"] = str(save_pruned(model, plan, out_dir / "checkpoint", tokenizer).resolve())

    eval_rows = evaluation_rows(cfg, run, model, tokenizer, texts)
    rows += eval_rows

    record_run(rows, out_dir, cfg.results_file)
    logger.log_rows(rows)
    logger.finish()
    seconds = time.perf_counter() - t_start
    (out_dir / "summary.json").write_text(json.dumps({"run_id": run_id, "config": resolved, "rows": len(rows),
                                                      "seconds": round(seconds, 1)}, indent=1, default=str))
    kept = next((r["value"] for r in rows if r["metric"] == "kept_fraction"), 1.0)
    print(summarize_eval(run_id, run, eval_rows, seconds, cfg.results_file).replace("[evaluate]", "[run]")
          + f" | params kept {100 * kept:.1f}%")
    return rows


@hydra.main(config_path="../conf", config_name="run", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_experiment(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
