"""Execute the analysis notebooks headless against a results folder; keep .ipynb in sync with .py.

    python -m experiments.notebooks                                   # results/ → outputs/notebooks/*.ipynb
    python -m experiments.notebooks --results /some/results --plans '/runs/*/*/pruning_plan.json'
    python -m experiments.notebooks --only recovery gamma_ablation --strict
    python -m experiments.notebooks --sync                            # rewrite notebooks/*.ipynb from the .py

How notebooks are paired, executed, and skipped when their rows do not exist yet: nirvana/reporting/notebooks.py.
Executed copies (with outputs and figures) go to `--out`; `--strict` makes a notebook without rows a failure.
"""

from __future__ import annotations

import argparse
import sys

from nirvana.paths import REPO_ROOT
from nirvana.reporting.notebooks import execute_all, notebook_sources, out_of_sync, sync


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=None, help="results folder (layout of results/; default: results/)")
    ap.add_argument("--plans", default=None, help="glob of pruning_plan.json files (allocation notebook)")
    ap.add_argument("--out", default=str(REPO_ROOT / "outputs" / "notebooks"), help="executed notebooks go here")
    ap.add_argument("--only", nargs="*", default=None, help="notebook names (stems) to run")
    ap.add_argument("--jobs", type=int, default=1, help="notebooks executed in parallel (one kernel each)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    ap.add_argument("--strict", action="store_true", help="a notebook without its rows is a failure")
    ap.add_argument("--sync", action="store_true", help="only rewrite notebooks/*.ipynb from the .py files")
    ap.add_argument("--check-sync", action="store_true", help="only check that every .ipynb matches its .py")
    args = ap.parse_args(argv)

    try:
        sources = notebook_sources(args.only)
    except ValueError as e:
        ap.error(str(e))
    if args.sync:
        for path in sync(sources):
            print(f"[notebooks] wrote {path.relative_to(REPO_ROOT)}")
        return 0
    stale = out_of_sync(sources)
    if stale:
        print(f"[notebooks] out of sync with their .py: {[str(p.relative_to(REPO_ROOT)) for p in stale]} "
              "(run: python -m experiments.notebooks --sync)", file=sys.stderr)
    if args.check_sync:
        return 1 if stale else 0
    outcomes = execute_all(args.results, args.plans, args.out, args.only, args.jobs, args.timeout)
    for o in outcomes:
        print(f"[notebooks] {o.name}: {o.status} ({o.seconds:.0f}s)" + (f" → {o.output}" if o.output else ""))
        if o.message:
            print("    " + o.message.replace("\n", "\n    "))
    failed = [o for o in outcomes if o.status == "failed" or (args.strict and o.status == "skipped")]
    ok = sum(o.status == "ok" for o in outcomes)
    print(f"[notebooks] {ok}/{len(outcomes)} executed, {sum(o.status == 'skipped' for o in outcomes)} skipped "
          f"(no rows yet), {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
