"""Tables and figures from result rows (never from models): the paper's Table 2 layout with intervals, plots.

    python -m experiments.report --rows results/demo/rows.jsonl --out results/demo
    python -m experiments.report --rows results/rows/table2_smollm2_135m.jsonl --out results/tables/smollm2_135m \\
        --model smollm2_135m --paper results/paper/table2.csv
    python -m experiments.report --rows results/rows/table2_smollm2_135m.jsonl results/rows/quant_smollm2_135m.jsonl \
        --out results/tables/quant --model smollm2_135m --reference base nirvana
    python -m experiments.report --draws --rows results/rows/table2_smollm2_135m.jsonl \
        results/rows/draws_smollm2_135m.jsonl results/rows/beyond_smollm2_135m.jsonl \
        --out results/tables/smollm2_135m_draws --model smollm2_135m --family flap taylor wanda_sp:matched --also nirvana:kl

What is written, and how intervals and paired differences are computed: nirvana/reporting/report.py.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from nirvana.reporting.report import build_draw_report, build_report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", required=True, help="result-row JSONL file(s)")
    ap.add_argument("--out", required=True, help="folder for tables and figures")
    ap.add_argument("--model", default=None, help="model name in the rows (required when several)")
    ap.add_argument("--paper", default="results/paper/table2.csv", help="paper numbers (optional file)")
    ap.add_argument("--plans", nargs="*", default=[], help="pruning_plan.json files for allocation figures")
    ap.add_argument("--reference", nargs="+", default=None, metavar="METHOD",
                    help="what each method is paired with: a pruner's label (default nirvana; e.g. flap:kl) or base "
                         "(quantized/recovered vs the pruned model they came from); the first makes table2.*, each further one table2_vs_<it>.*")
    ap.add_argument("--skip-absent", action="store_true",
                    help="leave out --reference methods that have no rows yet (a sweep in progress) instead of refusing")
    ap.add_argument("--pruners", nargs="+", default=None, metavar="PRUNER",
                    help="tabulate only these pruners' rows (the rows' pruner names, e.g. nirvana flap:round32) and the "
                         "dense model's; default: every method in the rows")
    ap.add_argument("--command", default=None, help="the command that produced the rows (quoted in the table)")
    ap.add_argument("--draws", action="store_true", help="the view over calibration draws (draws*.md): means over "
                    "draws, comparisons paired by draw and item, the headline family's Holm-adjusted verdicts")
    ap.add_argument("--family", nargs="+", default=None, metavar="METHOD",
                    help="--draws: the baselines of the headline family (default: every method with draws)")
    ap.add_argument("--also", nargs="+", default=None, metavar="METHOD",
                    help="--draws: single selections (nirvana:kl) compared too, unadjusted")
    ap.add_argument("--columns", nargs="+", default=None, metavar="COLUMN",
                    help="--draws: the family's metrics (default: avg and every perplexity @512)")
    args = ap.parse_args(argv)
    if args.draws and args.pruners:
        ap.error("--pruners is for the per-run tables; the draws view chooses its methods with --family and --also")
    command = args.command or "python -m experiments.report " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        if args.draws:
            written = build_draw_report(args.rows, args.out, args.model, command, (args.reference or ["nirvana"])[0],
                                        args.family, args.also, args.columns)
        else:
            written = build_report(args.rows, args.out, args.model, args.paper, args.plans, command,
                                   args.reference, skip_absent=args.skip_absent, pruners=args.pruners)
    except ValueError as e:
        ap.error(str(e))
    for path in written:
        print(f"[report] wrote {path}")


if __name__ == "__main__":
    main()
