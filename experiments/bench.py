"""Benchmarks: `make bench` → results/bench/<section>.json, SUMMARY.md and scoring.png.

    python -m experiments.bench                          # every section (conf/bench.yaml)
    python -m experiments.bench sections=[scoring,speed]

Each section (nirvana/bench/sections.py) measures a figure side by side with its reference in the same run, writes
its JSON as soon as it finishes (an interrupted bench keeps finished sections), and SUMMARY.md is rebuilt from
every JSON present.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nirvana.atomic import write_json
from nirvana.bench.config import BenchConfig
from nirvana.bench.sections import check_environment, run_section, scoring_goal, validate
from nirvana.bench.summary import provenance, utc_now, write_summary
from nirvana.config import typed
from nirvana.results import versions

log = logging.getLogger("experiments.bench")


def run_bench(cfg: DictConfig) -> Path:
    c: BenchConfig = typed(cfg)  # types, keys and values checked here (nirvana/bench/config.py)
    validate(c)
    check_environment(c)
    versions()  # the commit now, before this benchmark's own results files change the tree
    out_dir = Path(c.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m experiments.bench " + " ".join(sys.argv[1:])
    for name in c.sections:
        started = utc_now()
        config, result = run_section(name, c)
        doc = {"section": name, "config": config, "result": result, "provenance": provenance(command, started)}
        if name == "scoring":
            doc["goal"] = scoring_goal(result)
        write_json(out_dir / f"{name}.json", doc)
        log.info("%s → %s", name, out_dir / f"{name}.json")
    summary = write_summary(out_dir)
    log.info("summary → %s", summary)
    return summary


@hydra.main(config_path="../conf", config_name="bench", version_base=None)
def main(cfg: DictConfig) -> None:
    run_bench(cfg)


if __name__ == "__main__":
    main()
