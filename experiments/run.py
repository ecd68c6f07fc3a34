"""One experiment run — calibrate, prune, (recover with LoRA,) (quantize,) evaluate — ending in tidy result rows.

    python -m experiments.run model=smollm2_135m pruner=nirvana sparsity=0.2 eval=quick
    python -m experiments.run -m experiment=demo        # a sweep defined in conf/experiment/demo.yaml

Resume: the run id hashes what changes the numbers (protocol.run_identity); a run's rows reach `job.results_file`
in ONE atomic batch at its very end, so a rerun of a sweep skips every id there (`job.force=true` recomputes) and a
killed run leaves nothing partial. The run folder holds the resolved config (.hydra/), plan, calibration, rows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from nirvana.atomic import atomic_file
from nirvana.config import RunConfig, typed
from nirvana.evaluation import protocol, runner
from nirvana.evaluation.llamacpp import DeployStage
from nirvana.loggers import make_logger
from nirvana.models import load_from_config, read_config
from nirvana.pipeline import PruneRecipe, check_recipe, prune
from nirvana.quantization import quantize_stage
from nirvana.recovery import RecoveryStage
from nirvana.requirements import check_requirements, is_hub_model
from nirvana.surgery import save_pruned

log = logging.getLogger("experiments.run")


def run_experiment(c: RunConfig, out_dir: str | Path, sweep: str | None = None) -> list[dict]:
    """One run; `sweep` names the multirun it belongs to, so that job.force recomputes a run once per sweep (a
    sweep over pruner × sparsity meets the dense run once per sparsity: it is the same run)."""
    t_start, out_dir, job, m = time.perf_counter(), Path(out_dir), c.job, c.model
    recipe = PruneRecipe.from_config(c) if c.pruner.prunes else None
    recovery = RecoveryStage.from_config(c.recovery)  # conf/recovery; absent: no fine-tuning
    deploy = DeployStage.from_config(c, out_dir)  # conf/deploy: evaluated in llama.cpp; absent: in transformers
    # Everything checkable without a model first: missing data, GPUs or hub fail in a second.
    hub_data = recovery is not None and recovery.needs_hub
    check_requirements(gpu=job.requires.gpu, hub=job.requires.hub or hub_data or is_hub_model(m.name_or_path),
                       what="this experiment" if job.requires.gpu or job.requires.hub or hub_data else f"model {m.name}")
    protocol.check_data(c.eval)
    if recipe is not None:
        check_recipe(recipe, read_config(m.name_or_path, m.trust_remote_code))
    calibrated = recipe is not None or (c.quant is not None and c.quant.scheme == "w8a8_smoothquant")
    data = protocol.check_disjoint(c.calibration if calibrated else None, c.eval, c.allow_overlap,
                                   recovery.training_sets if recovery else None)
    run_id, identity = protocol.run_identity(c)
    done = runner.finished_in(run_id, job.results_file, job.done_in, job.force, sweep)
    if job.preflight:  # with -m: one line per run of a sweep, saying what a launch would do with it
        log.info("preflight ok: run %s %s (%s) — %s", run_id, m.name, protocol.run_label(recipe, c.quant, recovery),
                 f"complete, would be skipped (rows in {done})" if done else "to run")
        return []
    if done:
        log.info("%s (%s, %s, s=%s) already complete in %s; skipped (job.force=true recomputes)", run_id, m.name,
                 c.pruner.name, c.sparsity, done)
        return []
    texts, examples = protocol.load_eval_texts(c.eval), (recovery.examples() if recovery else None)
    if recipe is not None:
        recipe.heldout = protocol.search_heldout(c, texts)  # allocator=search: its held-out report
    logger = make_logger(job.logger)
    logger.log_config(identity)

    model, tokenizer = load_from_config(m)
    run = {"run_id": run_id, "model": m.name, "checkpoint": m.name_or_path, "pruner": "dense", "sparsity": 0.0,
           "gamma": None, **protocol.placement_columns(model), **(deploy.columns() if deploy else {})}
    rows, plan, outcome = [], None, None
    if recipe is not None:
        outcome = prune(model, tokenizer, recipe)
        out_dir.mkdir(parents=True, exist_ok=True)
        if outcome.calibration_ids is not None:
            with atomic_file(out_dir / "calibration.pt", "wb") as fh:
                torch.save(outcome.calibration_ids, fh)
        plan = outcome.plan
        run.update(recipe.row_columns(outcome))
    rows += protocol.pruning_rows(run, plan, outcome)
    if recovery is not None:  # records itself in the plan's extra["recovery"]
        model, result, _ = recovery.run(model, tokenizer, examples, out_dir / "recovery", run["checkpoint"], plan,
                                        progress=job.progress)
        rows += protocol.recovery_rows(run, result, {"data_source": recovery.data.source})
    if plan is not None:
        plan.save(out_dir)
        if job.save_checkpoint:
            run["checkpoint"] = str(save_pruned(model, plan, out_dir / "checkpoint", tokenizer).resolve())
    if c.quant is not None:
        result = quantize_stage(model, tokenizer, c.quant, c.calibration,
                                outcome.calibration_ids if outcome is not None else None)
        run["dtype"] = c.quant.label()  # the rows of a quantized model say so in their dtype column
        rows = [{**r, "dtype": run["dtype"]} for r in rows] + protocol.quantization_rows(run, c.quant, result)
    pieces = runner.pieces_of(run, model, job.partial_dir, job.force)  # what an interrupted launch evaluated
    rows += (deploy or protocol).evaluation_rows(c.eval, run, model, tokenizer, texts, job.progress, pieces)
    protocol.mark_overlaps(rows, data)
    marks = {"sweep": sweep} | ({"recovery": recovery.name} if recovery else {})  # a recovered model's label
    rows = [{**r, "extra": {**r["extra"], **marks}} for r in rows]
    logger.log_rows(rows)
    logger.finish()
    return runner.finish(log, run, rows, out_dir, job.results_file, time.perf_counter() - t_start,
                         {"config": identity, "data": data}, pieces=pieces)


@hydra.main(config_path="../conf", config_name="run", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_experiment(typed(cfg), hc.runtime.output_dir, hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None)


if __name__ == "__main__":
    main()
