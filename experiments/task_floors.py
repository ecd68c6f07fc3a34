"""Chance and majority-class accuracy of each zero-shot task, from the task definitions on the built data, written
to the snapshot the reports read (nirvana/evaluation/task_floors.json; docs/protocol.md, "Task floors"):

    python -m experiments.task_floors                  # Table 2's 500 items, the demo's 30, and all items
    python -m experiments.task_floors --limits 100

Needs the benchmark data (`make assets`), no model; about half a minute.
"""

from __future__ import annotations

import argparse

from nirvana.evaluation.chance import SNAPSHOT, write_snapshot


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limits", nargs="+", default=["30", "500", "full"],
                    help="lm-eval limits (first N items of each task); full: every item")
    ap.add_argument("--out", default=str(SNAPSHOT), help="where to write the snapshot")
    args = ap.parse_args(argv)
    path = write_snapshot([None if x == "full" else int(x) for x in args.limits], args.out)
    print(f"[task_floors] wrote {path}")


if __name__ == "__main__":
    main()
