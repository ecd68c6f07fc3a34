"""Prune one model: calibration → scores → plan → surgery → (checkpoint).

    python -m experiments.prune model=smollm2_135m pruner=nirvana sparsity=0.2 gamma=3.36 save_dir=DIR

The run folder (Hydra's output dir) gets the resolved config, `calibration.pt` (the exact ids used, so
`calibration=tensor calibration.path=<it>` replays the run), `pruning_plan.json` and `summary.json`.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from nirvana.atomic import atomic_file, write_json
from nirvana.config import PruneConfig, typed
from nirvana.models import load_from_config, read_config
from nirvana.pipeline import PruneRecipe, check_recipe, prune
from nirvana.surgery import save_pruned
from nirvana.surgery.checkpoint import check_save_dir

log = logging.getLogger("experiments.prune")


def run_prune(c: PruneConfig, out_dir: str | Path):
    out_dir = Path(out_dir)
    recipe = PruneRecipe.from_config(c)
    # Everything checkable without weights first: a typo must not cost a model load and a backward pass.
    check_save_dir(c.save_dir, c.overwrite)
    check_recipe(recipe, read_config(c.model.name_or_path, c.model.trust_remote_code))
    t0 = time.perf_counter()
    model, tokenizer = load_from_config(c.model)
    t_load = time.perf_counter() - t0
    outcome = prune(model, tokenizer, recipe)
    plan = outcome.plan
    out_dir.mkdir(parents=True, exist_ok=True)
    if outcome.calibration_ids is not None:
        with atomic_file(out_dir / "calibration.pt", "wb") as fh:
            torch.save(outcome.calibration_ids, fh)
    plan.save(out_dir)
    if c.save_dir:
        save_pruned(model, plan, c.save_dir, tokenizer, overwrite=c.overwrite)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    write_json(out_dir / "summary.json", {
        "model": c.model.name, "pruner": recipe.pruner, "sparsity": recipe.sparsity, "gamma": recipe.gamma,
        "params_before": plan.params_before, "params_after": plan.params_after,
        "pruned_groups": plan.pruned_groups, "pruned_neurons": plan.pruned_neurons,
        "load_seconds": round(t_load, 2), "score_and_plan_seconds": round(outcome.seconds, 2),
        "peak_rss_gib": round(peak_gib, 2), "save_dir": c.save_dir, "overwrite": c.overwrite,
        "run_dir": str(out_dir)})
    log.info("%s | scoring+plan %.1fs, peak RSS %.2f GiB%s", plan.summary(), outcome.seconds, peak_gib,
             f" | saved to {c.save_dir}" if c.save_dir else "")
    return model, plan


@hydra.main(config_path="../conf", config_name="prune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_prune(typed(cfg), HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
