"""Tables and figures from result rows (never from models): the paper's Table 2 layout, plots.

    python -m experiments.report --rows results/demo/rows.jsonl --out results/demo
    python -m experiments.report --rows results/rows/runs.jsonl --out results/tables --model llama3.1_8b \\
        --paper results/paper/table2.csv

Writes <out>/table2.{md,csv,tex}, <out>/table2_vs_paper.md (when paper numbers exist), and figures:
metrics_vs_sparsity.png, allocation_<run>.png (NIRVANA's per-layer widths, from saved plans),
gamma_ablation.png and kl_vs_perplexity.png when the rows hold such sweeps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nirvana.plan import PruningPlan
from nirvana.reporting import figures, tables
from nirvana.results import read_rows


def build_report(rows_files: list[str], out: str | Path, model: str | None = None, paper: str | None = None,
                 plans: list[str] | None = None) -> list[Path]:
    out = Path(out)
    rows = read_rows(rows_files)
    if rows.empty:
        raise SystemExit(f"no result rows in {rows_files}")
    models = sorted(rows["model"].dropna().unique())
    if model is None and len(models) > 1:
        raise SystemExit(f"rows hold several models {models}: pick one with --model")
    written = []
    wide = tables.table2(rows, model)
    written += tables.write_table(wide, out)
    paper_rows = tables.read_paper(paper) if paper else None
    if paper_rows is not None:
        long = tables.with_paper(wide, paper_rows, model)
        path = out / "table2_vs_paper.md"
        path.write_text(long.to_markdown(index=False, floatfmt=".4f") if not long.empty else "no overlapping cells\n")
        written.append(path)
    written.append(figures.metrics_vs_sparsity(rows, out / "metrics_vs_sparsity.png", model))
    for optional in (figures.gamma_ablation, figures.kl_vs_perplexity):
        try:
            written.append(optional(rows, out / f"{optional.__name__}.png"))
        except ValueError:
            pass  # the rows hold no such sweep
    for plan_file in plans or []:
        plan = PruningPlan.load(plan_file)
        written.append(figures.allocation(plan, out / f"allocation_{plan.pruner}_s{plan.sparsity:g}.png"))
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", required=True, help="result-row JSONL file(s)")
    ap.add_argument("--out", required=True, help="folder for tables and figures")
    ap.add_argument("--model", default=None, help="model name in the rows (required when several)")
    ap.add_argument("--paper", default="results/paper/table2.csv", help="paper numbers (optional file)")
    ap.add_argument("--plans", nargs="*", default=[], help="pruning_plan.json files for allocation figures")
    args = ap.parse_args(argv)
    for path in build_report(args.rows, args.out, args.model, args.paper, args.plans):
        print(f"[report] wrote {path}")


if __name__ == "__main__":
    main()
