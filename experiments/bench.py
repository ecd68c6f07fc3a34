"""Benchmarks: `make bench` → results/bench/<section>.json, SUMMARY.md and scoring.png.

    python -m experiments.bench                          # every section (conf/bench.yaml)
    python -m experiments.bench sections=[scoring,speed]

Each section measures a figure side by side with its reference in the same run (medians of interleaved
repeats, ratios), writes its JSON as soon as it finishes (an interrupted bench keeps finished sections), and
SUMMARY.md is rebuilt from every JSON present. See nirvana/bench/ for what each section measures and how.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from nirvana import paths
from nirvana.atomic import write_json
from nirvana.bench.models import check_model_spec
from nirvana.bench.scoring import check_variants
from nirvana.bench.summary import provenance, utc_now, write_summary
from nirvana.evaluation.zeroshot import check_tasks

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_SECTIONS = ("scoring", "speed", "zeroshot", "demo")
# The targets, recorded with the results so the summary can say which variant meets them.
SCORING_GOAL = {"peak_ratio": 0.6, "time_ratio": 1.0}


def validate(cfg: DictConfig) -> None:
    """Everything checkable before a model is loaded."""
    unknown = [s for s in cfg.sections if s not in BENCH_SECTIONS]
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; choose from {list(BENCH_SECTIONS)}")
    if "scoring" in cfg.sections:
        s = cfg.scoring
        check_variants(s.variants)
        for m in s.models:
            check_model_spec(m.name)
            if int(m.batch) < 1 or int(m.seq_len) < 2:
                raise ValueError(f"scoring.models: batch must be ≥ 1 and seq_len ≥ 2, got {dict(m)}")
        if int(s.repeats) < 1:
            raise ValueError(f"scoring.repeats must be ≥ 1, got {s.repeats}")
    if "speed" in cfg.sections and int(cfg.speed.repeats) < 1:
        raise ValueError(f"speed.repeats must be ≥ 1, got {cfg.speed.repeats}")
    if "zeroshot" in cfg.sections:
        z = cfg.zeroshot
        check_tasks(list(z.tasks), "local")
        if int(z.limit) < 1 or int(z.repeats) < 1:
            raise ValueError(f"zeroshot.limit and zeroshot.repeats must be ≥ 1, got {z.limit}, {z.repeats}")


def _bar(progress: bool, desc: str):
    return (lambda jobs: tqdm(jobs, desc=desc)) if progress else None


def run_section(name: str, cfg: DictConfig) -> tuple[dict, dict]:
    """(the section's config as run, its result)."""
    c = OmegaConf.to_container(cfg[name], resolve=True)
    bar = _bar(cfg.progress, name)
    if name == "scoring":
        from nirvana.bench.scoring import run_scoring_bench

        models = {m["name"]: {"batch": m["batch"], "seq_len": m["seq_len"]} for m in c["models"]}
        with tempfile.TemporaryDirectory(prefix="nirvana-bench-scores-") as scores_dir:  # for score differences
            result = run_scoring_bench(models, c["variants"], c["repeats"], c["device"], c["dtype"],
                                       scores_dir=scores_dir, progress=bar)
        return c, result
    if name == "speed":
        from nirvana.bench.speed import run_speed_bench

        return c, run_speed_bench(c["model"], c["sparsities"], c["gamma"], c["shapes"], c["repeats"],
                                  c["calibration"], c.get("score_cache"), progress=bar)
    if name == "zeroshot":
        from nirvana.bench.zeroshot import run_zeroshot_bench

        model_dir = c["model_dir"] or str(paths.smollm2_dir())
        return c, run_zeroshot_bench(c["model"], model_dir, c["tasks"], c["limit"], c["batch_size"],
                                     c["max_length"], c["repeats"], str(REPO_ROOT), progress=bar)
    if name == "demo":
        from nirvana.bench.demo import run_demo_bench

        return c, run_demo_bench(str(REPO_ROOT), c["args"])
    raise AssertionError(name)


def scoring_goal(result: dict) -> dict:
    met = {}
    for row in result["summary"]:
        if row["variant"] == "naive" or "peak_ratio" not in row:
            met.setdefault(row["model"], [])
            continue
        ok = (row["peak_ratio"] <= SCORING_GOAL["peak_ratio"] and row["time_ratio"] <= SCORING_GOAL["time_ratio"]
              and row.get("plan_identical", False))
        met.setdefault(row["model"], []).extend([row["variant"]] if ok else [])
    return {**SCORING_GOAL, "met_by": met}


def run_bench(cfg: DictConfig) -> Path:
    validate(cfg)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m experiments.bench " + " ".join(sys.argv[1:])
    for name in cfg.sections:
        started = utc_now()
        config, result = run_section(name, cfg)
        doc = {"section": name, "config": config, "result": result, "provenance": provenance(command, started)}
        if name == "scoring":
            doc["goal"] = scoring_goal(result)
        write_json(out_dir / f"{name}.json", doc)
        print(f"[bench] {name} → {out_dir / f'{name}.json'}", flush=True)
    summary = write_summary(out_dir)
    print(f"[bench] summary → {summary}")
    return summary


@hydra.main(config_path="../conf", config_name="bench", version_base=None)
def main(cfg: DictConfig) -> None:
    run_bench(cfg)


if __name__ == "__main__":
    main()
