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
from omegaconf import DictConfig, OmegaConf

from nirvana.atomic import atomic_file, write_json
from nirvana.checkpoint import save_pruned
from nirvana.evaluation import protocol
from nirvana.evaluation.llamacpp import DeployStage
from nirvana.loggers import make_logger
from nirvana.models import load_from_config, read_config
from nirvana.pipeline import PruneRecipe, check_recipe, prune
from nirvana.quantization import quantize_stage, spec_from_config
from nirvana.recovery import RecoveryStage
from nirvana.requirements import check_requirements, is_hub_model
from nirvana.results import record_run, recorded

log = logging.getLogger("experiments.run")


def run_experiment(cfg: DictConfig, out_dir: str | Path, sweep: str | None = None) -> list[dict]:
    """One run; `sweep` names the multirun it belongs to, so that job.force recomputes a run once per sweep (a
    sweep over pruner × sparsity meets the dense run once per sparsity: it is the same run)."""
    t_start, out_dir = time.perf_counter(), Path(out_dir)
    c = OmegaConf.to_container(cfg, resolve=True)
    job, m = c["job"], c["model"]
    recipe = None if c["pruner"]["name"] == "dense" else PruneRecipe.from_config(c)
    quant = spec_from_config(c.get("quant"))  # conf/quant; absent: the model stays in float
    recovery = RecoveryStage.from_config(c.get("recovery"))  # conf/recovery; absent: no fine-tuning
    deploy = DeployStage.from_config(c, out_dir)  # conf/deploy: evaluated in llama.cpp; absent: in transformers
    # Everything checkable without a model first: typos and missing GPUs/hub fail in a second.
    req, hub_data = job["requires"], recovery is not None and recovery.needs_hub
    check_requirements(gpu=req["gpu"], hub=req["hub"] or hub_data or is_hub_model(m["name_or_path"]),
                       what="this experiment" if req["gpu"] or req["hub"] or hub_data else f"model {m['name']}")
    protocol.validate_eval(c["eval"])
    if recipe is not None:
        check_recipe(recipe, read_config(m["name_or_path"], m.get("trust_remote_code")))
    calibrated = recipe is not None or (quant is not None and quant.scheme == "w8a8_smoothquant")
    data = protocol.check_disjoint(c["calibration"] if calibrated else None, c["eval"], c["allow_overlap"],
                                   recovery.training_sets if recovery else None)
    run_id, identity = protocol.run_identity(c)
    # job.done_in: other rows files whose finished runs count as done (a sweep that extends another one, e.g.
    # Table 2 over more calibration draws, skips the runs the first one already has); job.force ignores them
    found_in = [f for f in [job["results_file"], *job["done_in"]] if recorded(run_id, f)]
    if job["preflight"]:  # with -m: one line per run of a sweep, saying what a launch would do with it
        log.info("preflight ok: run %s %s (%s) — %s", run_id, m["name"], protocol.run_label(recipe, quant, recovery),
                 "to run" if job["force"] or not found_in else f"complete, would be skipped (rows in {found_in[0]})")
        return []
    done_in = sweep if job["force"] else None  # with force, only what this very sweep finished counts as done
    if job["force"] and sweep and recorded(run_id, job["results_file"], done_in) or not job["force"] and found_in:
        log.info("%s (%s, %s, s=%s) already complete in %s; skipped (job.force=true recomputes)", run_id,
                 m["name"], c["pruner"]["name"], c["sparsity"], (found_in or [job["results_file"]])[0])
        return []
    texts, examples = protocol.load_eval_texts(c["eval"]), (recovery.examples() if recovery else None)
    logger = make_logger(**job["logger"])
    logger.log_config(identity)

    model, tokenizer = load_from_config(m)
    run = {"run_id": run_id, "model": m["name"], "checkpoint": m["name_or_path"], "pruner": "dense",
           "sparsity": 0.0, "gamma": None, **protocol.placement_columns(model), **(deploy.columns() if deploy else {})}
    rows, plan = [], None
    if recipe is not None:
        outcome = prune(model, tokenizer, recipe)
        out_dir.mkdir(parents=True, exist_ok=True)
        if outcome.calibration_ids is not None:
            with atomic_file(out_dir / "calibration.pt", "wb") as fh:
                torch.save(outcome.calibration_ids, fh)
        plan = outcome.plan
        run.update(recipe.row_columns(outcome))
        rows += protocol.pruning_rows(run, plan, outcome)
    else:
        rows += protocol.pruning_rows(run, None)
    if recovery is not None:  # records itself in the plan's extra["recovery"]
        model, result, _ = recovery.run(model, tokenizer, examples, out_dir / "recovery", run["checkpoint"], plan,
                                        progress=job["progress"])
        rows += protocol.recovery_rows(run, result, {"data_source": recovery.data["source"]})
    if plan is not None:
        plan.save(out_dir)
        if job["save_checkpoint"]:
            run["checkpoint"] = str(save_pruned(model, plan, out_dir / "checkpoint", tokenizer).resolve())
    if quant is not None:
        result = quantize_stage(model, tokenizer, quant, c["calibration"],
                                outcome.calibration_ids if recipe is not None else None)
        run["dtype"] = quant.label()  # the rows of a quantized model say so in their dtype column
        rows = [{**r, "dtype": run["dtype"]} for r in rows] + protocol.quantization_rows(run, quant, result)
    rows += (deploy or protocol).evaluation_rows(c["eval"], run, model, tokenizer, texts, job["progress"])
    protocol.mark_overlaps(rows, data)
    marks = {"sweep": sweep} | ({"recovery": recovery.name} if recovery else {})  # a recovered model's label
    rows = [{**r, "extra": {**r["extra"], **marks}} for r in rows]
    record_run(rows, out_dir, job["results_file"])
    logger.log_rows(rows)
    logger.finish()
    seconds = time.perf_counter() - t_start
    write_json(out_dir / "summary.json", {"run_id": run_id, "config": identity, "rows": len(rows), "data": data,
                                          "seconds": round(seconds, 1)})
    log.info(protocol.summary_line(run, rows, seconds, job["results_file"]))
    return rows


@hydra.main(config_path="../conf", config_name="run", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_experiment(cfg, hc.runtime.output_dir, hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None)


if __name__ == "__main__":
    main()
