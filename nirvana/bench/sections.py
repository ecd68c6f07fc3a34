"""The sections of `make bench` (conf/bench.yaml): checked before anything runs, each run to a JSON document.

Each section measures a figure side by side with its reference in the same run (medians of interleaved
repeats, ratios); the modules next to this one say what each measures and how.
"""

from __future__ import annotations

import tempfile

from tqdm import tqdm

from .. import paths
from ..evaluation.zeroshot import check_tasks
from .models import check_model_spec
from .scoring import check_variants

BENCH_SECTIONS = ("scoring", "statistics", "kl", "kl_fitness", "speed", "llamacpp", "quant", "zeroshot", "exactness",
                  "demo")
# The targets, recorded with the results so the summary can say which variant meets them.
SCORING_GOAL = {"peak_ratio": 0.6, "time_ratio": 1.0}
# The automatic schedule (nirvana.scoring.schedule): as shipped, at most this peak and time relative to the naive scorer,
# and its memory estimate within `prediction` of the measured peak for every variant it predicts.
AUTO_GOAL = {"variant": "auto", "peak_ratio": 0.4, "time_ratio": 1.0, "prediction": 0.2}


def validate(cfg: dict) -> None:
    """Everything checkable before a model is loaded (`cfg`: conf/bench.yaml as a dict)."""
    unknown = [s for s in cfg["sections"] if s not in BENCH_SECTIONS]
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; choose from {list(BENCH_SECTIONS)}")
    if "scoring" in cfg["sections"]:
        s = cfg["scoring"]
        check_variants(s["variants"])
        for m in s["models"]:
            check_model_spec(m["name"])
            if int(m["batch"]) < 1 or int(m["seq_len"]) < 2:
                raise ValueError(f"scoring.models: batch must be ≥ 1 and seq_len ≥ 2, got {dict(m)}")
            unknown_keys = set(m) - {"name", "batch", "seq_len", "dtype", "variants", "repeats", "memory_budget_gib",
                                        "reference_dtype"}
            if unknown_keys:
                raise ValueError(f"scoring.models: unknown key(s) {sorted(unknown_keys)} in {dict(m)}")
            check_variants(m.get("variants") or [])
        if int(s["repeats"]) < 1:
            raise ValueError(f"scoring.repeats must be ≥ 1, got {s['repeats']}")
    if "statistics" in cfg["sections"] and int(cfg["statistics"]["repeats"]) < 1:
        raise ValueError(f"statistics.repeats must be ≥ 1, got {cfg['statistics']['repeats']}")
    if "kl" in cfg["sections"]:
        k = cfg["kl"]
        if int(k["repeats"]) < 1:
            raise ValueError(f"kl.repeats must be ≥ 1, got {k['repeats']}")
        bad = [s for s in k["sparsities"] if not 0.0 < float(s) < 1.0]
        if bad:
            raise ValueError(f"kl.sparsities must lie in (0, 1), got {bad}")
    if "kl_fitness" in cfg["sections"]:
        k = cfg["kl_fitness"]
        if int(k["repeats"]) < 1 or int(k["draws"]) < 1:
            raise ValueError(f"kl_fitness.repeats and kl_fitness.draws must be ≥ 1, got {k['repeats']}, {k['draws']}")
        bad = [s for s in k["sparsities"] if not 0.0 < float(s) < 1.0]
        if bad:
            raise ValueError(f"kl_fitness.sparsities must lie in (0, 1), got {bad}")
    if "speed" in cfg["sections"] and int(cfg["speed"]["repeats"]) < 1:
        raise ValueError(f"speed.repeats must be ≥ 1, got {cfg['speed']['repeats']}")
    if "llamacpp" in cfg["sections"]:
        from ..deploy import check_gguf_type

        c = cfg["llamacpp"]
        for t in c["types"]:
            check_gguf_type(t)
        if int(c["repeats"]) < 1 or not c["threads"] or any(int(n) < 1 for n in c["threads"]):
            raise ValueError(f"llamacpp.repeats and every llamacpp.threads must be ≥ 1, got {c['repeats']}, {c['threads']}")
    if "quant" in cfg["sections"]:
        from ..quantization import QuantSpec

        q = cfg["quant"]
        for scheme in q["schemes"]:
            QuantSpec(scheme=scheme)  # a bad scheme fails here
        if int(q["repeats"]) < 1:
            raise ValueError(f"quant.repeats must be ≥ 1, got {q['repeats']}")
    if "zeroshot" in cfg["sections"]:
        z = cfg["zeroshot"]
        check_tasks(list(z["tasks"]), "local")
        if int(z["limit"]) < 1 or int(z["repeats"]) < 1:
            raise ValueError(f"zeroshot.limit and zeroshot.repeats must be ≥ 1, got {z['limit']}, {z['repeats']}")


def check_environment(cfg: dict) -> None:
    """What this machine must have for the chosen sections, checked after `validate` and before any section runs.

    Kept apart from `validate` so a configuration can be checked on a machine that lacks an optional runtime."""
    if "llamacpp" in cfg["sections"]:
        from ..deploy import runtime

        if not runtime.available():
            raise RuntimeError(runtime.INSTALL_HINT + "; or leave the section out: sections=[…] without llamacpp")


def _bar(progress: bool, desc: str):
    return (lambda jobs: tqdm(jobs, desc=desc)) if progress else None


def run_section(name: str, cfg: dict) -> tuple[dict, dict]:
    """(the section's config as run, its result)."""
    c = cfg[name]
    bar = _bar(cfg["progress"], name)
    if name == "scoring":
        from .scoring import run_scoring_bench

        models = {m["name"]: {k: v for k, v in dict(m).items() if k != "name"} for m in c["models"]}
        with tempfile.TemporaryDirectory(prefix="nirvana-bench-scores-") as scores_dir:  # for score differences
            result = run_scoring_bench(models, c["variants"], c["repeats"], c["device"], c["dtype"],
                                       scores_dir=scores_dir, progress=bar)
        return c, result
    if name == "kl":
        from .kl import run_kl_bench

        return c, run_kl_bench(c["model"], c["sparsities"], c["repeats"], c["probe"], c["calibration"],
                               c.get("score_cache"), progress=bar)
    if name == "kl_fitness":
        from .kl_fitness import run_kl_fitness_bench

        return c, run_kl_fitness_bench(c["model"], c["sparsities"], c["draws"], c["repeats"], c["probe"],
                                       c["calibration"], c.get("score_cache"), progress=bar)
    if name == "speed":
        from .speed import run_speed_bench

        return c, run_speed_bench(c["model"], c["sparsities"], c["gamma"], c["shapes"], c["repeats"],
                                  c["calibration"], c.get("score_cache"), progress=bar)
    if name == "llamacpp":
        from .llamacpp import run_llamacpp_bench

        return c, run_llamacpp_bench(c["model"], c["sparsities"], c["gamma"], c["types"], c["threads"], c["shape"],
                                     c["repeats"], c["calibration"], c.get("score_cache"), progress=bar)
    if name == "quant":
        from .quant import run_quant_bench

        return c, run_quant_bench(c["model"], c["sparsities"], c["gamma"], c["schemes"], c["shapes"], c["repeats"],
                                  c["calibration"], c.get("score_cache"), progress=bar)
    if name == "statistics":
        from .statistics import run_statistics_bench

        with tempfile.TemporaryDirectory(prefix="nirvana-bench-stats-") as scratch:
            return c, run_statistics_bench(c["repeats"], scratch, progress=bar)
    if name == "zeroshot":
        from .zeroshot import run_zeroshot_bench

        model_dir = c["model_dir"] or str(paths.smollm2_dir())
        with tempfile.TemporaryDirectory(prefix="nirvana-bench-zs-") as scratch:
            return c, run_zeroshot_bench(model_dir, c["tasks"], c["limit"], c["batch_size"], c["max_length"],
                                         c["repeats"], scratch, progress=bar)
    if name == "exactness":
        from .zeroshot import run_exactness_bench

        model_dir = c["model_dir"] or str(paths.smollm2_dir())
        with tempfile.TemporaryDirectory(prefix="nirvana-bench-exact-") as scratch:
            return c, run_exactness_bench(model_dir, c["tasks"], c["limit"], c["sparsity"], c["max_length"],
                                          scratch, progress=bar, tolerance=c["tolerance"])
    if name == "demo":
        from .demo import run_demo_bench

        return c, run_demo_bench(str(paths.REPO_ROOT), c["args"])
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
