"""Evaluate one model — perplexity, lm-eval zero-shot, speed — and append tidy result rows.

    python -m experiments.evaluate model.path=CHECKPOINT_DIR eval=zeroshot eval.limit=100
    python -m experiments.evaluate model=smollm2_135m eval=ppl

`model.path` (a checkpoint folder, dense or pruned) takes precedence over the model group's `name_or_path`; a
pruned folder's `pruning_plan.json` supplies the pruner, sparsity, γ and calibration columns. Rows go to
`job.results_file` (appended in one batch when the run ends) and to `rows.jsonl` in the run folder; a run
whose id already has rows there is skipped before the model is loaded (`job.force=true` recomputes).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nirvana.calibration import CalibrationConfig
from nirvana.config import EvaluateConfig, typed
from nirvana.evaluation import protocol, runner
from nirvana.models import load_from_config

log = logging.getLogger("experiments.evaluate")


def run_evaluate(c: EvaluateConfig, out_dir: str | Path) -> list[dict]:
    t_start, job, m = time.perf_counter(), c.job, c.model
    protocol.check_data(c.eval, m.path)
    plan = protocol.checkpoint_plan(m.path)
    calibration = CalibrationConfig.from_record(plan.extra.get("calibration") if plan else None)
    data = protocol.check_disjoint(calibration, c.eval, c.allow_overlap)
    run_id, identity = protocol.run_identity(c)
    done = runner.finished_in(run_id, job.results_file, force=job.force)
    if done:
        log.info("run %s already has rows in %s; skipped (job.force=true recomputes)", run_id, done)
        return []
    texts = protocol.load_eval_texts(c.eval)  # before the model: a missing dataset must not cost a load

    model, tokenizer = load_from_config(m)
    run = {"run_id": run_id, **protocol.checkpoint_columns(m.path, m.name, m.name_or_path, plan),
           **protocol.placement_columns(model)}
    rows = protocol.pruning_rows(run, plan)
    rows += protocol.evaluation_rows(c.eval, run, model, tokenizer, texts, job.progress)
    protocol.mark_overlaps(rows, data)
    return runner.finish(log, run, rows, out_dir, job.results_file, time.perf_counter() - t_start,
                         {"config": identity, "data": data, "results_file": str(Path(job.results_file).resolve())})


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_evaluate(typed(cfg), HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
