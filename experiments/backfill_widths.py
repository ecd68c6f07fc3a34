"""Backfill per-layer widths and the plan hash into committed pruned rows, recomputing each run's plan (never its
evaluation) from the recipe its rows record and refusing any run whose recomputed plan does not match what the
rows recorded (nirvana/backfill.py; docs/protocol.md, "Result rows"):

    python -m experiments.backfill_widths results/rows/table2_smollm2_135m.jsonl results/demo/rows.jsonl
    python -m experiments.backfill_widths results/rows/beyond_smollm2_135m.jsonl --runs eed8a327f125

Loads each model once (the real one: NIRVANA_CACHE, `make assets`); a plan costs its scoring pass (minutes on
a CPU; cached unit scores make it seconds). Exit status 1 when a run was refused.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nirvana.backfill import backfill


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", help="result-row JSONL file(s), rewritten in place")
    ap.add_argument("--runs", nargs="+", default=None, help="only these run ids")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="Hydra overrides every candidate config gets (runs made with extra overrides)")
    ap.add_argument("--experiment", default="auto",
                    help="the experiment config the runs came from (auto: search, named like the rows' sweep "
                         "folder first; none: the base config)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    refused = 0
    for path in args.rows:
        for run_id, what in backfill(path, args.set, args.runs,
                                      None if args.experiment == "none" else args.experiment).items():
            print(f"[backfill] {path} {run_id}: {what}")
            refused += what.startswith("refused")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
