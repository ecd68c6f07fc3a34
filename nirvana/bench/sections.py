"""The sections of `make bench` (conf/bench.yaml): checked before anything runs, each run to a JSON document.

Each section measures a figure side by side with its reference in the same run (medians of interleaved
repeats, ratios); the modules next to this one say what each measures and how.
"""

from __future__ import annotations

import dataclasses
import tempfile

from tqdm import tqdm

from .. import paths
from ..evaluation.zeroshot import check_tasks
from .config import BenchConfig

# The targets, recorded with the results so the summary can say which variant meets them.
SCORING_GOAL = {"peak_ratio": 0.6, "time_ratio": 1.0}
# The automatic schedule (nirvana.scoring.schedule): as shipped, at most this peak and time relative to the naive scorer,
# and its memory estimate within `prediction` of the measured peak for every variant it predicts.
AUTO_GOAL = {"variant": "auto", "peak_ratio": 0.4, "time_ratio": 1.0, "prediction": 0.2}


def validate(cfg: BenchConfig) -> None:
    """What the schema cannot check alone, for the chosen sections only: that the zero-shot tasks exist in the built
    benchmark data. Everything else (types, keys, ranges, names) was checked when the config was built."""
    for name in ("zeroshot", "exactness"):
        if name in cfg.sections:
            check_tasks(list(getattr(cfg, name).tasks), "local")


def check_environment(cfg: BenchConfig) -> None:
    """What this machine must have for the chosen sections, checked after `validate` and before any section runs.

    Kept apart from `validate` so a configuration can be checked on a machine that lacks an optional runtime."""
    if "llamacpp" in cfg.sections:
        from ..deploy import runtime

        if not runtime.available():
            raise RuntimeError(runtime.INSTALL_HINT + "; or leave the section out: sections=[…] without llamacpp")


def _bar(progress: bool, desc: str):
    return (lambda jobs: tqdm(jobs, desc=desc)) if progress else None


def run_section(name: str, cfg: BenchConfig) -> tuple[dict, dict]:
    """(the section's config as run, as a dict for its JSON document; its result)."""
    c = getattr(cfg, name)
    as_run = dataclasses.asdict(c)
    bar = _bar(cfg.progress, name)
    calibration = as_run.get("calibration")  # the keyword arguments of build_calibration
    if name == "scoring":
        from .scoring import run_scoring_bench

        models = {m.name: m.options() for m in c.models}
        with tempfile.TemporaryDirectory(prefix="nirvana-bench-scores-") as scores_dir:  # for score differences
            result = run_scoring_bench(models, c.variants, c.repeats, c.device, c.dtype, scores_dir=scores_dir,
                                       progress=bar)
        return as_run, result
    if name == "kl":
        from .kl import run_kl_bench

        return as_run, run_kl_bench(c.model, c.sparsities, c.repeats, as_run["probe"], calibration, c.score_cache,
                                    progress=bar)
    if name == "kl_fitness":
        from .kl_fitness import run_kl_fitness_bench

        return as_run, run_kl_fitness_bench(c.model, c.sparsities, c.draws, c.repeats, as_run["probe"], calibration,
                                            c.score_cache, progress=bar)
    if name == "speed":
        from .speed import run_speed_bench

        return as_run, run_speed_bench(c.model, c.sparsities, c.gamma, as_run["shapes"], c.repeats, calibration,
                                       c.score_cache, progress=bar)
    if name == "llamacpp":
        from .llamacpp import run_llamacpp_bench

        return as_run, run_llamacpp_bench(c.model, c.sparsities, c.gamma, c.types, c.threads, as_run["shape"],
                                          c.repeats, calibration, c.score_cache, progress=bar)
    if name == "quant":
        from .quant import run_quant_bench

        return as_run, run_quant_bench(c.model, c.sparsities, c.gamma, c.schemes, as_run["shapes"], c.repeats,
                                       calibration, c.score_cache, progress=bar)
    if name == "statistics":
        from .statistics import run_statistics_bench

        with tempfile.TemporaryDirectory(prefix="nirvana-bench-stats-") as scratch:
            return as_run, run_statistics_bench(c.repeats, scratch, progress=bar)
    if name == "zeroshot":
        from .zeroshot import run_zeroshot_bench

        with tempfile.TemporaryDirectory(prefix="nirvana-bench-zs-") as scratch:
            return as_run, run_zeroshot_bench(c.model_dir or str(paths.smollm2_dir()), c.tasks, c.limit,
                                              c.batch_size, c.max_length, c.repeats, scratch, progress=bar)
    if name == "exactness":
        from .zeroshot import run_exactness_bench

        with tempfile.TemporaryDirectory(prefix="nirvana-bench-exact-") as scratch:
            return as_run, run_exactness_bench(c.model_dir or str(paths.smollm2_dir()), c.tasks, c.limit, c.sparsity,
                                               c.max_length, scratch, progress=bar, tolerance=c.tolerance)
    if name == "demo":
        from .demo import run_demo_bench

        return as_run, run_demo_bench(str(paths.REPO_ROOT), c.args)
    raise AssertionError(name)


def scoring_goal(result: dict) -> dict:
    met = {}
    for row in result["summary"]:
        if row["variant"] in ("naive", "reference") or "peak_ratio" not in row:
            met.setdefault(row["model"], [])
            continue
        ok = (row["peak_ratio"] <= SCORING_GOAL["peak_ratio"] and row["time_ratio"] <= SCORING_GOAL["time_ratio"]
              and row.get("plan_identical", False))
        met.setdefault(row["model"], []).extend([row["variant"]] if ok else [])
    auto = {}
    for model in met:
        rows = [r for r in result["summary"] if r["model"] == model]
        row = next((r for r in rows if r["variant"] == AUTO_GOAL["variant"] and "peak_ratio" in r), None)
        errors = [abs(r["prediction_error"]) for r in rows if "prediction_error" in r]
        auto[model] = {
            "peak_and_time": None if row is None else (row["peak_ratio"] <= AUTO_GOAL["peak_ratio"]
                                                       and row["time_ratio"] <= AUTO_GOAL["time_ratio"]
                                                       and row.get("plan_identical", False)),
            "prediction": (max(errors) <= AUTO_GOAL["prediction"]) if errors else None,
        }
    return {**SCORING_GOAL, "met_by": met, "auto": {**AUTO_GOAL, "met": auto}}
