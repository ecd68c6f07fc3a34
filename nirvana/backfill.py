"""Backfill what a pruned run's rows should carry — per-layer widths and the plan's hash (docs/protocol.md, "Result
rows") — into rows written before they carried it. A plan is deterministic from its recipe, so the plan is
recomputed from what the rows record, never the evaluation, and checked against every number the rows recorded
about it before anything is written:

    python -m experiments.backfill_widths results/rows/table2_smollm2_135m.jsonl …

Which recipe: a run id is a hash of the run's resolved config (protocol.run_identity), so candidate configs — a
shipped experiment (those named like the run's sweep folder first), the rows' model, pruner or recipe (`nirvana:kl`
→ recipe nirvana_kl), sparsity, calibration seed, quantization and recovery as overrides — are composed until one
hashes to the run id; none does: the run is refused. A run that chose its calibration draw or γ by KL records
the choice (`calibration_seed`, `gamma`): its plan is recomputed on that draw at that γ with the selection off — the
plan the selection computed for that candidate (the same calibration text, the same allocation).

The check: params_after, kept_fraction and achieved_sparsity (and widths / plan_hash where present) must equal
the recomputed plan's; a mismatch refuses the run. Each verified run's kept_fraction row gains extra.widths,
extra.plan_hash and extra.widths_backfilled_at (the commit of the code that recomputed it); every other line of
the file stays byte for byte, and the file is rewritten atomically under the lock result writers take.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import paths
from .atomic import atomic_file
from .config import typed
from .evaluation import protocol
from .pipeline import PruneRecipe, prune
from .results import iter_rows

log = logging.getLogger(__name__)

CHECKED = ("params_after", "kept_fraction", "achieved_sparsity")


def needs_backfill(rows: list[dict]) -> list[str]:
    """Run ids of pruned runs whose kept_fraction row lacks widths or the plan hash, in file order."""
    out = []
    for r in rows:
        if r.get("metric") == "kept_fraction" and r.get("pruner") not in (None, "dense"):
            extra = r.get("extra") or {}
            if ("widths" not in extra or "plan_hash" not in extra) and r["run_id"] not in out:
                out.append(r["run_id"])
    return out


def recorded(rows: list[dict], run_id: str) -> dict[str, Any]:
    """What the run's pruning rows say about its plan: the CHECKED values, widths and plan_hash if present, and
    the row columns of the recipe."""
    mine = [r for r in rows if r.get("run_id") == run_id]
    out = {"row": next(r for r in mine if r.get("metric") == "kept_fraction")}
    for r in mine:
        if r.get("task") == "pruning" and r.get("metric") in CHECKED:
            out[r["metric"]] = r["value"]
    extra = out["row"].get("extra") or {}
    out.update({k: extra[k] for k in ("widths", "plan_hash") if k in extra})
    return out


def experiments() -> list[str]:
    return sorted(p.stem for p in (paths.REPO_ROOT / "conf" / "experiment").glob("*.yaml"))


AUTO = "auto"


def candidates(row: dict, extra_overrides: list[str] | None = None, experiment: str | None = AUTO
               ) -> Iterator[list[str]]:
    """Override lists that may have produced `row`'s run, the likeliest first: with `experiment` auto, the
    experiments named like its sweep folder (outputs/<name>/…), then every other, then none (a name: that one
    only; None: none); for each, its pruner or recipe spelt every way a `pruner:variant` label can come from, with
    and without the recorded calibration seed and γ."""
    sweep = str((row.get("extra") or {}).get("sweep") or "")
    folder = sweep.split("/")[1] if sweep.startswith("outputs/") and sweep.count("/") >= 2 else None
    names = experiments()
    ordered = [n for n in names if folder and n.startswith(folder)] + [n for n in names if not folder or
                                                                        not n.startswith(folder)] + [None]
    if experiment != AUTO:
        ordered = [experiment]
    name, _, variant = str(row["pruner"]).partition(":")
    pruners = [[f"recipe={name}_{variant}"], [f"pruner={name}_{variant}"],
               [f"pruner={name}", f"pruner.variant={variant}"]] if variant else [[f"pruner={name}"]]
    common = [f"model={row['model']}", f"sparsity={row['sparsity']}"]
    dtype = row.get("dtype")
    if dtype and dtype not in ("float32", "bfloat16", "float16"):
        common.append(f"quant={dtype.split('-')[0]}")
    if recovery := (row.get("extra") or {}).get("recovery"):
        common.append(f"recovery={recovery}")
    selected = row.get("calibration_selection") not in (None, "none")
    seeds = [[]] + ([] if selected or row.get("calibration_seed") is None
                    else [[f"calibration.seed={int(row['calibration_seed'])}"]])
    gammas = [[]] + ([[f"gamma={row['gamma']}"]] if row.get("gamma") is not None else [])
    for experiment in ordered:
        for pruner in pruners:
            for seed in seeds[::-1]:
                for gamma in gammas:
                    head = [f"experiment={experiment}"] if experiment else []
                    yield head + pruner + common + seed + gamma + list(extra_overrides or [])


def find_config(row: dict, extra_overrides: list[str] | None = None, experiment: str | None = AUTO
                ) -> tuple[dict, list[str]] | None:
    """The resolved config whose run id is the row's, and the overrides that compose it (None: no candidate)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(paths.REPO_ROOT / "conf"), version_base="1.3"):
        for overrides in candidates(row, extra_overrides, experiment):
            try:
                cfg = typed(compose(config_name="run", overrides=overrides))
            except Exception:  # noqa: BLE001 — a spelling that names no config group: the next candidate
                continue
            if protocol.run_identity(cfg)[0] == row["run_id"]:
                return cfg, overrides
    return None


def replay_recipe(config, row: dict) -> PruneRecipe:
    """The recipe that recomputes the run's plan (`config`: its typed RunConfig): as configured, but on the draw
    and at the γ a KL selection chose (recorded in the row), without the KL probe."""
    recipe = PruneRecipe.from_config(config)
    recipe.measure_kl = False
    if recipe.calibration.selection != "none":
        recipe.calibration = dataclasses.replace(recipe.calibration, selection="none", seed=int(row["calibration_seed"]))
    if isinstance(recipe.gamma, (str, list)):  # gamma=auto or a list: the γ the KL chose
        recipe.options = {**recipe.options, "gamma": float(row["gamma"])}
    return recipe


def mismatches(plan, found: dict[str, Any]) -> list[str]:
    """How the recomputed plan differs from what the rows recorded (empty: it is the run's plan)."""
    out = []
    mine = {"params_after": plan.params_after, "kept_fraction": plan.kept_fraction,
            "achieved_sparsity": plan.achieved_sparsity}
    for key, value in mine.items():
        if key in found and not math.isclose(found[key], value, rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"{key}: recorded {found[key]!r}, recomputed {value!r}")
    if "widths" in found and found["widths"] != plan.widths():
        out.append("widths differ from the recorded ones")
    if "plan_hash" in found and found["plan_hash"] != plan.decision_hash():
        out.append(f"plan_hash: recorded {found['plan_hash']}, recomputed {plan.decision_hash()}")
    if not any(k in found for k in CHECKED):
        out.append("the rows record nothing to check the plan against")
    return out


def update_row(path: str | os.PathLike, run_id: str, extra: dict[str, Any]) -> None:
    """Merge `extra` into the run's kept_fraction row; every other line stays byte for byte. Atomic, under the
    folder lock that nirvana.results.append_rows takes (a sweep may append to the same file meanwhile)."""
    path = Path(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        lines = path.read_bytes().split(b"\n")
        done = 0
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("run_id") == run_id and r.get("metric") == "kept_fraction":
                r["extra"] = {**(r.get("extra") or {}), **extra}
                lines[i] = json.dumps(r, ensure_ascii=False, default=str).encode()
                done += 1
        if done != 1:
            raise ValueError(f"{path}: {done} kept_fraction rows of run {run_id}, expected one")
        with atomic_file(path, "wb") as fh:
            fh.write(b"\n".join(lines))
    finally:
        os.close(dir_fd)


def backfill(path: str | os.PathLike, extra_overrides: list[str] | None = None, runs: list[str] | None = None,
             experiment: str | None = AUTO, load: Callable | None = None) -> dict[str, str]:
    """Backfill every pruned run of `path` that lacks widths or its plan hash (or only `runs`). Returns run id →
    "backfilled (<the overrides that matched its id>)" or why it was refused. `experiment`: where to look for
    the run's config (`candidates`). `load(model_config) → (model, tokenizer)`: defaults to the project's loader;
    one model per name is loaded once (`prune(..., apply=False)` leaves it dense)."""
    from .models import load_from_config
    from .provenance import git_hash

    load = load or load_from_config
    rows = list(iter_rows(path))
    todo = [r for r in needs_backfill(rows) if runs is None or r in runs]
    loaded: dict[str, tuple] = {}
    outcome: dict[str, str] = {}
    commit = git_hash()
    if commit.endswith("-dirty") and todo:
        log.warning("the code that recomputes the plans is not a clean commit (%s): rows will say so", commit)
    for run_id in todo:
        found = recorded(rows, run_id)
        match = find_config(found["row"], extra_overrides, experiment)
        if match is None:
            outcome[run_id] = "refused: no shipped config (with the rows' settings) has this run id"
            continue
        config, overrides = match
        name = config.model.name
        if name not in loaded:
            loaded[name] = load(config.model)
        model, tokenizer = loaded[name]
        plan = prune(model, tokenizer, replay_recipe(config, found["row"]), apply=False).plan
        wrong = mismatches(plan, found)
        if wrong:
            outcome[run_id] = "refused: the recomputed plan is not the run's — " + "; ".join(wrong)
            continue
        update_row(path, run_id, {"widths": plan.widths(), "plan_hash": plan.decision_hash(),
                                  "widths_backfilled_at": commit})
        outcome[run_id] = f"backfilled ({' '.join(overrides)})"
        log.info("%s: %s", run_id, outcome[run_id])
    return outcome
