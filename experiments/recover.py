"""LoRA recovery of a pruned checkpoint: evaluate, fine-tune (resumable), merge, save, evaluate again.

    python -m experiments.recover model.path=CHECKPOINT_DIR                          # official (alpaca-cleaned)
    python -m experiments.recover model.path=CHECKPOINT_DIR recovery=lora_offline    # offline stand-in data
    python -m experiments.recover model.path=CHECKPOINT_DIR recovery.max_steps=50    # a short run

`job.work_dir` defaults to outputs/recover/<run id>, so rerunning the same command resumes training from its last
checkpoint (and reuses the "before" evaluation). The merged model is saved like any pruned checkpoint, its plan's
`extra["recovery"]` recording settings, data and outcome. Rows go to `job.results_file` in one batch at the end:
every eval stage with `extra.stage` = "before" / "after", and task "recovery" rows (train_loss with the loss
curve, val_loss, train_seconds).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nirvana.atomic import write_json
from nirvana.config import RecoverConfig, typed
from nirvana.evaluation import protocol, runner
from nirvana.models import load_from_config
from nirvana.recovery import RecoveryStage
from nirvana.requirements import check_requirements
from nirvana.results import append_rows, iter_rows
from nirvana.surgery import save_pruned
from nirvana.surgery.checkpoint import check_save_dir

log = logging.getLogger("experiments.recover")


def run_recover(c: RecoverConfig, out_dir: str | Path) -> list[dict]:
    t_start, job, m, stage = time.perf_counter(), c.job, c.model, RecoveryStage.from_config(c.recovery)
    protocol.check_data(c.eval, m.path)  # everything checkable without a model, first
    protocol.check_disjoint(None, c.eval, c.allow_overlap, stage.training_sets)
    if stage.needs_hub:
        check_requirements(hub=True, what=f"recovery on {stage.data.dataset} (recovery.data.source=alpaca)")
    run_id, identity = protocol.run_identity(c)
    done = runner.finished_in(run_id, job.results_file, force=job.force)
    if done:
        log.info("run %s already has rows in %s; skipped (job.force=true recomputes)", run_id, done)
        return []
    work_dir = Path(job.work_dir or Path("outputs") / "recover" / run_id)
    save_dir = Path(job.save_dir or work_dir / "checkpoint")  # the default lives in the run's own work folder
    check_save_dir(job.save_dir, job.overwrite)
    write_json(work_dir / "config.json", identity)
    examples = stage.examples()
    texts = protocol.load_eval_texts(c.eval)  # before the model: a missing dataset must not cost a load

    model, tokenizer = load_from_config(m)
    plan = protocol.checkpoint_plan(m.path)
    run = {"run_id": run_id, **protocol.checkpoint_columns(m.path, m.name, m.name_or_path, plan),
           **protocol.placement_columns(model)}
    before_file = work_dir / "rows_before.jsonl"  # a resumed run does not evaluate the input model again
    before = [r for r in iter_rows(before_file) if r.get("run_id") == run_id]
    if not before:
        before = staged(protocol.evaluation_rows(c.eval, run, model, tokenizer, texts, job.progress), "before")
        append_rows(before_file, before)
    merged, result, record = stage.run(model, tokenizer, examples, work_dir, run["checkpoint"], plan, job.progress,
                                       save_every=job.save_every, keep_last=job.keep_last)
    save_pruned(merged, plan, save_dir, tokenizer, overwrite=job.overwrite or not job.save_dir)
    write_json(save_dir / "recovery.json", record | {"history": result.history, "val_history": result.val_history})

    after_run = {**run, "checkpoint": str(save_dir.resolve())}
    after = staged(protocol.evaluation_rows(c.eval, after_run, merged, tokenizer, texts, job.progress), "after")
    extra = {"recovery": stage.name, "data_source": stage.data.source, "steps": result.steps}
    rows = before + after + protocol.recovery_rows(after_run, result, extra)
    log.info("train loss %s → %s | %d steps | saved %s", fmt(result.first_loss), fmt(result.train_loss),
             result.steps, save_dir)
    return runner.finish(log, after_run, rows, out_dir, job.results_file, time.perf_counter() - t_start,
                         {"checkpoint": str(save_dir), "result": {k: v for k, v in result.to_dict().items()
                                                                 if "history" not in k}},
                         summary_dir=work_dir, headline=after)


def staged(rows: list[dict], stage: str) -> list[dict]:
    return [{**r, "extra": {**r["extra"], "stage": stage}} for r in rows]


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


@hydra.main(config_path="../conf", config_name="recover", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_recover(typed(cfg), HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
