"""Tables and figures from result rows (never from models) — what `experiments.report` writes.

<out>/table2.{md,csv,tex}, table2_paired.md, table2_summary.md, table2_grid.md, table2_verdict.md
(nirvana.reporting.tables: values, 95 % intervals, paired differences to the first reference — NIRVANA unless
`references` says otherwise —, those comparisons as a method × sparsity grid, better/equivalent/worse/inconclusive
per headline metric, provenance) and, where the rows hold quantized or recovered models, table2_gains.md (what that stage changed, and
whether more than for the reference); the same as table2_vs_<reference>.* for each further reference (`flap:kl`,
or `base`: each quantized or recovered model vs the pruned model it came from); table2_vs_paper.md when paper
numbers exist; and figures: metrics_vs_sparsity.png (error bars), paired_differences[_vs_<reference>].png,
allocation_<pruner>_s<s>.png (from the widths the rows record, or from saved plans for older rows), gamma_ablation.png
and kl_vs_perplexity.png when the rows hold such sweeps. `build_draw_report`: the view over calibration draws
(draws.md, draws_verdict.md, draws_tasks.md, draws.csv; nirvana.reporting.draws). Rows of searched allocations
add search_cost.md and search_trace.png (nirvana.reporting.search).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..results import read_rows
from ..surgery.plan import PruningPlan
from . import draws, figures, pairing, search, tables

log = logging.getLogger(__name__)


def _rows_of_one_model(rows_files: list[str], model: str | None):
    """The rows of `rows_files`, refused when empty or when they hold several models and none is named."""
    rows = read_rows(rows_files)
    if rows.empty:
        raise ValueError(f"no result rows in {rows_files}")
    models = sorted(rows["model"].dropna().unique())
    if model is None and len(models) > 1:
        raise ValueError(f"rows hold several models {models}: pick one with --model")
    return rows


def only_pruners(rows: pd.DataFrame, pruners: list[str] | None) -> pd.DataFrame:
    """The rows of the named pruners (the rows' `pruner`, e.g. nirvana, flap:round32) and the dense model's: a study
    that adds a few methods to Table 2's rows tabulates those and the ones they pair with, not all of Table 2.
    Refuses a name no row has, before anything is written."""
    if not pruners:
        return rows
    unknown = sorted(set(pruners) - set(rows["pruner"].dropna()))
    if unknown:
        raise ValueError(f"--pruners {unknown}: no rows of them; the rows have {sorted(rows['pruner'].dropna().unique())}")
    return rows[rows["pruner"].isin({*pruners, "dense"})]


def build_report(rows_files: list[str], out: str | Path, model: str | None = None, paper: str | None = None,
                 plans: list[str] | None = None, command: str | None = None,
                 references: list[str] | None = None, skip_absent: bool = False,
                 pruners: list[str] | None = None) -> list[Path]:
    """`skip_absent`: leave out references no row can serve yet (a sweep in progress) instead of refusing them.
    `pruners`: tabulate only these pruners' rows and the dense model's (only_pruners)."""
    out = Path(out)
    rows = only_pruners(_rows_of_one_model(rows_files, model), pruners)
    methods = pairing.cells(rows, model)["method"].unique()
    servable = []
    for against in references or []:  # the default (NIRVANA) may be absent: then the tables have no Δ columns
        try:
            pairing.check_reference(methods, against)
        except ValueError:
            if not skip_absent:
                raise
            log.warning("no rows yet for reference %r: left out", against)
            continue
        servable.append(against)
    references = servable or [pairing.REFERENCE]
    prov = tables.provenance(rows)
    if prov["dirty"]:
        log.warning("rows from a dirty work tree (%s): the report marks them; do not commit them as results",
                    ", ".join(prov["dirty"]))
    written = []
    for i, against in enumerate(references):
        name = "table2" if i == 0 else f"table2_vs_{_slug(against)}"
        written += tables.write_table(rows, out, model, name=name, command=command, against=against)
    paper_rows = tables.read_paper(paper) if paper else None
    if paper_rows is not None:
        long = tables.with_paper(tables.table2(rows, model), paper_rows, model)
        path = out / "table2_vs_paper.md"
        path.write_text(tables.markdown(long, floatfmt=".4f") if not long.empty else "no overlapping cells\n")
        written.append(path)
    written.append(figures.metrics_vs_sparsity(rows, out / "metrics_vs_sparsity.png", model))
    for i, against in enumerate(references):
        try:
            name = "paired_differences" if i == 0 else f"paired_differences_vs_{_slug(against)}"
            written.append(figures.paired_differences(rows, out / f"{name}.png", model, against))
        except figures.NoData:
            pass  # no rows of that reference
    for optional in (figures.gamma_ablation, figures.kl_vs_perplexity):
        try:
            written.append(optional(rows, out / f"{optional.__name__}.png"))
        except figures.NoData:
            pass  # the rows hold no such sweep
    drawn = set()  # one figure per (pruner, sparsity): from the rows, else from the newest saved plan given
    found = figures.allocations_in_rows(rows, model) + [figures.allocation_of_plan(PruningPlan.load(f))
                                                         for f in plans or []]
    for name, widths, title in found:
        if name not in drawn:
            drawn.add(name)
            written.append(figures.allocation(widths, title, out / name))
    return written + search.write_search_report(rows, out, model, command)


def build_draw_report(rows_files: list[str], out: str | Path, model: str | None = None, command: str | None = None,
                      reference: str = pairing.REFERENCE, family: list[str] | None = None,
                      also: list[str] | None = None, columns: list[str] | None = None) -> list[Path]:
    """The draw-aware view (nirvana.reporting.draws) of rows holding several calibration draws per method:
    <out>/draws.md, draws_verdict.md, draws_tasks.md, draws.csv."""
    rows = _rows_of_one_model(rows_files, model)
    prov = tables.provenance(rows)
    if prov["dirty"]:
        log.warning("rows from a dirty work tree (%s): the report marks them; do not commit them as results",
                    ", ".join(prov["dirty"]))
    return draws.write_draw_report(rows, out, model, reference, family, also, columns, command)


def _slug(against: str) -> str:
    return against.replace(":", "-")
