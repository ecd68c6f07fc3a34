"""Prune one model: calibration → scores → plan → surgery → (checkpoint).

    python -m experiments.prune model=smollm2_135m pruner=nirvana sparsity=0.2 pruner.gamma=3.36 save_dir=DIR

The run folder (Hydra's output dir) gets the resolved config, `calibration.pt` (the exact ids used, so
`calibration=tensor calibration.path=<it>` replays the run), `pruning_plan.json` and `summary.json`.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from nirvana.allocation import validate_hyperparameters
from nirvana.calibration import choose_calibration
from nirvana.checkpoint import save_pruned
from nirvana.models import load_model
from nirvana.pruning import CALIBRATION_FREE, PRUNERS, compute_plan
from nirvana.surgery import apply_plan


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def run_prune(cfg: DictConfig, out_dir: str | Path):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = cfg.pruner
    options = {k: v for k, v in OmegaConf.to_container(p, resolve=True).items() if k not in ("name", "gamma")}
    # Cheap checks first: a typo in sparsity must not cost a model load and a backward pass.
    if p.name not in PRUNERS:
        raise ValueError(f"unknown pruner {p.name!r}; choose one of {sorted(PRUNERS)}")
    validate_hyperparameters(cfg.sparsity, p.gamma, options.get("round_to", 8))

    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg.model.name_or_path, cfg.model.dtype, cfg.model.device, cfg.model.device_map)
    t_load = time.perf_counter() - t0

    c = OmegaConf.to_container(cfg.calibration, resolve=True)

    def plan_for(ids, extra=None):
        return compute_plan(model, ids, p.name, sparsity=cfg.sparsity, gamma=p.gamma, model_name=cfg.model.name,
                            extra=extra, **options)

    t1 = time.perf_counter()
    ids, chosen = None, {"selection": "none"}
    if p.name not in CALIBRATION_FREE:
        choice = choose_calibration(model, tokenizer, plan_for, **c)
        ids, chosen = choice.ids, choice.record
        torch.save(ids, out_dir / "calibration.pt")
    plan = plan_for(ids, {"calibration": c, "calibration_choice": chosen,
                          "calibration_shape": list(ids.shape) if ids is not None else None})
    if chosen.get("candidates") and chosen["selection"] == "kl":
        for cand in chosen["candidates"]:
            mark = " ← chosen" if cand["label"] == chosen["chosen"] else ""
            print(f"[calibration] {cand['label']}: KL {cand['kl']:.5f}{mark}")
    t_score = time.perf_counter() - t1
    plan.save(out_dir)
    apply_plan(model, plan)
    if cfg.save_dir:
        save_pruned(model, plan, cfg.save_dir, tokenizer)

    summary = {
        "model": cfg.model.name, "pruner": p.name, "sparsity": cfg.sparsity, "gamma": p.gamma,
        "params_before": plan.params_before, "params_after": plan.params_after,
        "pruned_groups": plan.pruned_groups, "pruned_neurons": plan.pruned_neurons,
        "load_seconds": round(t_load, 2), "score_and_plan_seconds": round(t_score, 2),
        "peak_rss_gib": round(peak_rss_gib(), 2), "save_dir": cfg.save_dir, "run_dir": str(out_dir),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"[prune] {plan.summary()} | scoring+plan {t_score:.1f}s, peak RSS {summary['peak_rss_gib']:.2f} GiB"
          + (f" | saved to {cfg.save_dir}" if cfg.save_dir else ""))
    return model, plan


@hydra.main(config_path="../conf", config_name="prune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_prune(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
