"""The paper's Table 2 layout, and the views people read, from the long table of cells and paired differences
(nirvana.reporting.pairing): values with intervals, Δ and ÷ to the reference marked `*` where the interval
excludes no difference and `†` where the two remove different shares of parameters; the headline summary and its
verdicts; what a stage after pruning gained; provenance (commits, versions, limits) under every table. If the user
adds the paper's numbers to `results/paper/table2.csv` (results/paper/README.md), `with_paper` puts them side by
side with ours.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation.zeroshot import TASK_METRICS
from ..provenance import describe, verified_commit
from . import stats, verdicts
from .pairing import (
    ACHIEVED_COLUMN,
    AVG_COLUMN,
    BASE_REFERENCE,
    KEPT_COLUMN,
    REFERENCE,
    UNEQUAL,
    cells,
    compare,
    evidence,
    is_perplexity,
    long_table,
    method_rank,
    minus,
    reference_name,
    reference_of,
    table_order,
)


def table2(rows: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """Wide table of values indexed by (method, sparsity): kept, achieved, tasks, avg, then perplexities."""
    df = cells(rows, model)
    wide = df.pivot(index=["method", "sparsity"], columns="column", values="value")
    wide.columns.name = None
    front = [c for c in (ACHIEVED_COLUMN, KEPT_COLUMN) if c in wide.columns]
    tasks = [t for t in TASK_METRICS if t in wide.columns]
    ppl = sorted(c for c in wide.columns if is_perplexity(c))
    wide = wide[front + tasks + ([AVG_COLUMN] if AVG_COLUMN in wide.columns else []) + ppl]
    return wide.loc[table_order(wide.index)]


def _num(x: float) -> str:
    if x is None or pd.isna(x):
        return "–"
    return f"{x:.4f}" if abs(x) < 1 else f"{x:.2f}"


def _with_interval(value, lo, hi) -> str:
    if pd.isna(lo) or pd.isna(hi):
        return _num(value)
    return f"{_num(value)} [{_num(lo)}, {_num(hi)}]"


def _compared(g: pd.DataFrame) -> bool:
    """Whether a (method, sparsity) block of the long table has a reference to be compared with."""
    return "reference" in g and g["reference"].notna().any()


def display_table(long: pd.DataFrame, against: str = REFERENCE) -> pd.DataFrame:
    """The table as people read it: intervals on the mean and the perplexities, Δ to the reference, marks."""
    lines = []
    for key in table_order(long.groupby(["method", "sparsity"]).groups):
        g = long[(long["method"] == key[0]) & (long["sparsity"] == key[1])].set_index("column")
        line = {"method": key[0], "sparsity": f"{key[1]:g}"}
        if ACHIEVED_COLUMN in g.index:
            line["achieved"] = _num(g.loc[ACHIEVED_COLUMN, "value"])
        if KEPT_COLUMN in g.index:
            line[KEPT_COLUMN] = _num(g.loc[KEPT_COLUMN, "value"])
        for t in TASK_METRICS:
            if t in g.index:
                line[t] = _num(g.loc[t, "value"])
        unequal = bool(g["unequal"].any())
        for column in [AVG_COLUMN] + sorted(c for c in g.index if is_perplexity(c)):
            if column not in g.index:
                continue
            r = g.loc[column]
            line[f"{column} [95% CI]"] = _with_interval(r["value"], r["lo"], r["hi"])
            if _compared(g):
                label = f"Δ{column} vs {against}" if column == AVG_COLUMN else f"{column} ÷ {against}"
                cell = _with_interval(r["delta"], r["delta_lo"], r["delta_hi"])
                line[label] = cell + (" *" if r["significant"] else "") + (" †" if unequal else "") \
                    if not pd.isna(r["delta"]) else "–"
        lines.append(line)
    return pd.DataFrame(lines, columns=_columns(lines)).fillna("")


def _blocks(long: pd.DataFrame):
    """(method, sparsity, its rows indexed by column, its † mark) in table order: what the headline views read."""
    for method, s in table_order(long.groupby(["method", "sparsity"]).groups):
        g = long[(long["method"] == method) & (long["sparsity"] == s)].set_index("column")
        yield method, s, g, " †" if bool(g["unequal"].any()) else ""


def _columns(lines: list[dict]) -> list[str]:
    """Column order of lines that may lack some keys: the fullest line's order, then whatever others add."""
    return list(dict.fromkeys(k for line in sorted(lines, key=len, reverse=True) for k in line))


def summary_table(long: pd.DataFrame, seq_len: int = 512, against: str = REFERENCE) -> pd.DataFrame:
    """The headline view: parameters kept, the zero-shot average (in points) and every perplexity at `seq_len`,
    each with its 95 % interval and the paired comparison to the reference, marked with `verdict`'s word: `*`
    better or worse, `≈` equivalent (the interval inside the margin), none: inconclusive; † achieved sparsities
    differ by more than 1 point."""
    lines, name = [], reference_name(against)

    def pct(x):
        return "" if pd.isna(x) else f"{100 * x:.1f}"

    for method, s, g, mark in _blocks(long):
        compared = _compared(g)
        line = {"method": method, "sparsity": f"{s:g}",
                "params kept %": pct(g.loc[KEPT_COLUMN, "value"]) if KEPT_COLUMN in g.index else ""}
        if AVG_COLUMN in g.index:
            r = g.loc[AVG_COLUMN]
            line["zero-shot avg % [95% CI]"] = f"{pct(r['value'])} [{pct(r['lo'])}, {pct(r['hi'])}]"
            line[f"Δ vs {name} (points)"] = "" if not compared or pd.isna(r["delta"]) else \
                _signed_points(r["delta"], r["delta_lo"], r["delta_hi"]) + _spaced(_mark(r, False)) + mark
        for column in sorted(c for c in g.index if c.endswith(f"@{seq_len}")):
            r = g.loc[column]
            line[f"ppl {column}"] = f"{r['value']:.1f} [{r['lo']:.1f}, {r['hi']:.1f}]"
            line[f"{column} ÷ {name}"] = "" if not compared or pd.isna(r["delta"]) else \
                f"{r['delta']:.2f}× [{r['delta_lo']:.2f}, {r['delta_hi']:.2f}]" + _spaced(_mark(r, True)) + mark
        lines.append(line)
    return pd.DataFrame(lines, columns=_columns(lines)).fillna("")


def verdict(delta: float, lo: float, hi: float, perplexity: bool) -> str:
    """`better`, `equivalent`, `worse` or `inconclusive` for the row's method against the reference, read from the
    paired 95 % interval [lo, hi] that the summary prints (nirvana.reporting.verdicts.word: equivalent inside the
    pre-stated margin, better/worse where it excludes no difference, inconclusive otherwise); `–`: not paired.
    Unadjusted for multiple comparisons, and one calibration draw: the tables that use it say so."""
    if pd.isna(delta):
        return verdicts.NO_VERDICT
    return verdicts.word(lo, hi, perplexity)


def _mark(r: pd.Series, perplexity: bool) -> str:
    """The summary's and grid's mark of a long-table row's comparison: `*` better or worse, `≈` equivalent."""
    w = verdict(r["delta"], r["delta_lo"], r["delta_hi"], perplexity)
    return {"better": "*", "worse": "*", "equivalent": "≈"}.get(w, "")


def _spaced(mark: str) -> str:
    return f" {mark}" if mark else ""


def grid_table(long: pd.DataFrame, seq_len: int = 512, against: str = REFERENCE) -> pd.DataFrame:
    """The summary's comparisons folded into one line per method and one column per sparsity — what a README
    quotes. Each cell: the zero-shot Δ in points [95 % interval] · each perplexity ratio at `seq_len`, in the
    order `attrs["cell"]` names; `*` after a value the verdict calls better or worse, `≈` equivalent (its interval
    inside the margin; so no `1.00×*` from another thread count's rounding), `†` after a cell whose two models
    remove shares of parameters more than a point apart, `not run` where the method lacks that sparsity (`–` in
    the dense column and in a dense model's pruned columns)."""
    blocks = [(method, s, g, mark) for method, s, g, mark in _blocks(long) if _compared(g)]
    columns = sorted({c for *_, g, _ in blocks for c in g.index if c.endswith(f"@{seq_len}")})

    def value(g, column):  # "–" where this block lacks the metric or its pairing (magnitude has no zero-shot)
        if column not in g.index or pd.isna(g.loc[column, "delta"]):
            return "–"
        r = g.loc[column]
        star = _mark(r, perplexity=column != AVG_COLUMN)
        if column == AVG_COLUMN:
            return _signed_points(r["delta"], r["delta_lo"], r["delta_hi"]) + star
        return f"{r['delta']:.2f}×{star}"

    cells_by = {}
    for method, s, g, mark in blocks:
        parts = [value(g, c) for c in [AVG_COLUMN, *columns]]
        if parts.count("–") < len(parts):
            cells_by[(method, s)] = " · ".join(parts) + mark
    if not cells_by:
        return pd.DataFrame()
    sparsities = sorted({s for _, s in cells_by})  # where something was compared (not the reference's other rows)
    methods = sorted({m for m, _ in cells_by}, key=method_rank)
    pruned = {m for m, s in cells_by if s > 0}

    def missing(m, s):  # a dense model has no pruned twin, a pruned one no dense column: nothing there to run
        return "not run" if s > 0 and m in pruned else "–"

    grid = pd.DataFrame([{"method": m, **{f"{s:.0%}": cells_by.get((m, s)) or missing(m, s) for s in sparsities}}
                         for m in methods])
    name = reference_name(against)
    grid.attrs["cell"] = " · ".join([f"zero-shot Δ vs {name} (points) [95 % interval]"]
                                    + [f"{c} ÷ {name}" for c in columns])
    return grid


def verdict_table(long: pd.DataFrame, seq_len: int = 512, against: str = REFERENCE) -> pd.DataFrame:
    """Where each method is better, equivalent, worse or inconclusive against the reference: one word per headline
    metric (the zero-shot mean, each perplexity at `seq_len`) from the summary's paired 95 % interval (`verdict`;
    unadjusted, one calibration draw), a † where the two remove shares of parameters more than a point apart, and
    the tally — the summary table read out, so no sentence has to."""
    lines, name = [], reference_name(against)
    for method, s, g, mark in _blocks(long):
        if not _compared(g):
            continue
        columns = [c for c in [AVG_COLUMN, *sorted(c for c in g.index if c.endswith(f"@{seq_len}"))] if c in g.index]
        words = {("zero-shot" if c == AVG_COLUMN else f"ppl {c}"):
                 verdict(g.loc[c, "delta"], g.loc[c, "delta_lo"], g.loc[c, "delta_hi"], perplexity=is_perplexity(c))
                 for c in columns}
        if all(w == "–" for w in words.values()):
            continue  # a reference exists, but nothing of this block is paired with it (dense, unscored methods)
        tally = " · ".join(str(sum(w == k for w in words.values())) for k in verdicts.WORDS)
        lines.append({"method": method, "sparsity": f"{s:g}",
                      **{k: w + (mark if w != "–" else "") for k, w in words.items()},
                      f"{' · '.join(verdicts.WORDS)} vs {name}": tally})
    return pd.DataFrame(lines, columns=_columns(lines)).fillna("–")


def _points(iv: stats.Interval | None, null: float = 0.0) -> str:
    if iv is None:
        return "–"
    return _signed_points(iv.value, iv.lo, iv.hi) + (" *" if iv.excludes(null) else "")


def _signed_points(value: float, lo: float, hi: float) -> str:
    """A difference of fractions in points with its interval: "+1.2 [+0.1, +2.4]" (gains and the grid)."""
    return f"{100 * value:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _ratio(iv: stats.Interval | None) -> str:
    if iv is None:
        return "–"
    mark = " *" if iv.excludes(1.0) else ""
    return f"{iv.value:.2f}× [{iv.lo:.2f}, {iv.hi:.2f}]{mark}"


def stage_gains(rows: pd.DataFrame, model: str | None = None, against: str = REFERENCE,
                seq_len: int = 512) -> pd.DataFrame:
    """What a stage after pruning (recovery, quantization) did to each model — zero-shot mean after − before
    (points) and perplexity after ÷ before at `seq_len`, paired on the same items — and whether it did more
    for that model than for the reference's model given the same stage: the difference of the two gains
    (perplexity: the ratio of the two ratios), from item-by-item gains resampled together. * the interval
    excludes no difference. Empty when no model has both a stage and its base in the rows."""
    df = cells(rows, model)
    by_cell = {(r["method"], r["sparsity"], r["column"]): r for _, r in df.iterrows()}
    methods = df["method"].unique()
    columns = [AVG_COLUMN] + sorted(c for c in df["column"].unique() if c.endswith(f"@{seq_len}"))
    name, lines = reference_name(against), []
    for method, s in table_order(set(zip(df["method"], df["sparsity"]))):
        base = reference_of(method, methods, BASE_REFERENCE)
        if base is None or not any((base, s, c) in by_cell for c in columns):
            continue
        ref = reference_of(method, methods, against) if against != BASE_REFERENCE else None
        ref_base = reference_of(ref, methods, BASE_REFERENCE) if ref else None
        line = {"method": method, "sparsity": f"{s:g}", "compared with": base}
        for column in columns:
            mine, before = evidence(by_cell, method, s, column), evidence(by_cell, base, s, column)
            gain = compare(mine, before)
            theirs = minus(evidence(by_cell, ref, s, column), evidence(by_cell, ref_base, s, column)) \
                if ref and ref_base else None
            versus = compare(minus(mine, before), theirs)
            if column == AVG_COLUMN:
                line["zero-shot Δ after − before (points)"] = _points(gain)
                if against != BASE_REFERENCE:
                    line[f"Δ − {name}'s Δ (points)"] = _points(versus)
            else:
                line[f"{column} after ÷ before"] = _ratio(gain)
                if against != BASE_REFERENCE:
                    line[f"{column} ÷ {name}'s ratio"] = _ratio(versus)
        lines.append(line)
    return pd.DataFrame(lines)


def paired_task_table(long: pd.DataFrame) -> pd.DataFrame:
    """Δ accuracy to the reference per task (rows: method, sparsity), with intervals and marks."""
    sub = long[long["column"].isin(list(TASK_METRICS) + [AVG_COLUMN]) & long["delta"].notna()]
    if sub.empty:
        return pd.DataFrame()
    sub = sub.assign(cell=[_with_interval(d, lo, hi) + (" *" if s else "") for d, lo, hi, s in
                           zip(sub["delta"], sub["delta_lo"], sub["delta_hi"], sub["significant"])])
    wide = sub.pivot(index=["method", "sparsity"], columns="column", values="cell")
    wide = wide[[c for c in [*TASK_METRICS, AVG_COLUMN] if c in wide.columns]]
    return wide.loc[table_order(wide.index)].reset_index()


def markdown(df: pd.DataFrame, floatfmt: str = "g", numparse: bool = True) -> str:
    """The one markdown renderer (pandas → tabulate); numparse=False keeps preformatted cells as written."""
    return df.to_markdown(index=False, floatfmt=floatfmt, disable_numparse=not numparse) + "\n"


def provenance(rows: pd.DataFrame) -> dict:
    """What the table's numbers were computed at: commits, versions, item limits; rows from a dirty tree —
    except those whose recorded code tree is a commit's code (`verified`: dirty hash → that commit)."""
    hashes = sorted(set(rows["git_hash"].dropna()))
    verified = verified_commits(rows)
    return {"commits": hashes, "dirty": [h for h in hashes if h.endswith("-dirty") and h not in verified],
            "verified": verified,
            "lm_eval": sorted(set(rows["lm_eval_version"].dropna())), "runs": int(rows["run_id"].nunique()),
            "limits": sorted({str(x) for x in rows["limit"].dropna()})}


def verified_commits(rows: pd.DataFrame) -> dict[str, str]:
    """Dirty hash → the commit(s) whose code every one of its rows carries (`code_tree`), for the dirty hashes
    whose rows all verify; a row without a code tree (written before it was recorded) verifies nothing."""
    out = {}
    for dirty, group in rows[rows["git_hash"].fillna("").str.endswith("-dirty")].groupby("git_hash"):
        if commit := verified_commit(dirty, group["code_tree"]):
            out[dirty] = commit
    return out


def _commit_list(prov: dict) -> str:
    return ", ".join(describe(h, prov["verified"].get(h)) for h in prov["commits"])


def write_table(rows: pd.DataFrame, out_dir: str | Path, model: str | None = None, name: str = "table2",
                command: str | None = None, against: str = REFERENCE) -> list[Path]:
    """<name>.md (values, intervals, paired differences, provenance), <name>.csv (long: every interval),
    <name>.tex (the values), <name>_paired.md (Δ per task), <name>_summary.md (the headline view, at 512 tokens),
    <name>_grid.md (the summary's comparisons, one line per method and one column per sparsity), <name>_verdict.md
    (better/equivalent/worse/inconclusive per headline metric); all paired with `against` (`reference_of`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    long = long_table(rows, model, against)
    prov = provenance(rows if model is None else rows[rows["model"] == model])
    lines = []
    if prov["dirty"]:
        lines.append(f"> **Warning**: rows from a dirty work tree ({', '.join(prov['dirty'])}): not a clean result.\n")
    if command:
        lines.append(f"Produced by `{command}`.\n")
    lines.append(markdown(display_table(long, against)))
    lines.append(f"Commits: {_commit_list(prov)}; lm-eval {', '.join(prov['lm_eval'])}; {prov['runs']} runs; "
                 f"limits: {', '.join(prov['limits']) or 'none'}. Intervals: 95 % seeded bootstrap over items "
                 "(tasks resampled within themselves) or windows; Δ and ÷ are paired with "
                 f"{_pairing_phrase(against)} at the same sparsity on the same items; * the interval excludes 0 (for ÷: 1); † the two remove shares of "
                 f"parameters more than {UNEQUAL:.0%} apart (achieved column).\n")
    paths = [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.tex", out / f"{name}_paired.md"]
    paths[0].write_text("\n".join(lines))
    long.to_csv(paths[1], index=False, float_format="%.6g")
    paths[2].write_text(table2(rows, model).to_latex(float_format=_num))
    paired = paired_task_table(long)
    paths[3].write_text(markdown(paired) if not paired.empty else
                        f"no paired differences (no method with per-item results beside {against} at its sparsity)\n")
    paths.append(out / f"{name}_summary.md")
    paths[-1].write_text(f"{verdict_note(against)} Marks: * better or worse, ≈ equivalent, none: inconclusive; † the "
                         f"two remove shares of parameters more than {UNEQUAL:.0%} apart.\n\n"
                         + markdown(summary_table(long, against=against), numparse=False))
    grid = grid_table(long, against=against)
    if not grid.empty:
        paths.append(out / f"{name}_grid.md")
        paths[-1].write_text(f"Each cell: {grid.attrs['cell']}; * better or worse, ≈ equivalent, no mark: "
                             f"inconclusive (the words of {name}_verdict.md); † the two remove shares of parameters "
                             f"more than {UNEQUAL:.0%} apart. {verdict_note(against)}\n\n"
                             + markdown(grid, numparse=False))
    verdict_words = verdict_table(long, against=against)
    if not verdict_words.empty:
        paths.append(out / f"{name}_verdict.md")
        paths[-1].write_text(f"{verdict_note(against)} † the two remove shares of parameters more than "
                             f"{UNEQUAL:.0%} apart.\n\n" + markdown(verdict_words, numparse=False))
    gains = stage_gains(rows, model, against)
    if not gains.empty:  # quantized or recovered models next to the models they came from
        paths.append(out / f"{name}_gains.md")
        paths[-1].write_text(markdown(gains, numparse=False))
    return paths


def verdict_note(against: str = REFERENCE) -> str:
    """What the single-draw tables' words and marks rest on — said in their headers (docs/protocol.md)."""
    low, high = verdicts.band(True)
    return (f"Words (the row's method against {reference_name(against)}) read from the paired 95 % interval of one "
            "calibration draw per model: **unadjusted** for multiple comparisons, calibration-draw variance **not** "
            f"included. Equivalent: the interval inside ±{100 * verdicts.MARGIN_POINTS:.1f} points (zero-shot) or "
            f"{low:.3f}–{high:.2f}× (perplexity); better / worse: otherwise, where it excludes no difference; "
            "inconclusive: neither (docs/protocol.md, Verdicts).")


def _pairing_phrase(against: str) -> str:
    if against == BASE_REFERENCE:
        return "the same pruned model before quantization or recovery (base)"
    name = reference_name(against)
    return f"{name} (for a quantized or recovered model, {name} after the same stages)"


def with_paper(ours: pd.DataFrame, paper: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """Ours | paper | Δ for every cell the paper file provides (long format, one line per cell)."""
    p = paper if model is None else paper[paper["model"] == model]
    long = ours.stack().rename("ours").reset_index().rename(columns={"level_2": "column"})
    merged = long.merge(p.rename(columns={"value": "paper"})[["method", "sparsity", "column", "paper"]],
                        on=["method", "sparsity", "column"], how="inner")
    return merged.assign(delta=merged["ours"] - merged["paper"])


def read_paper(path: str | Path) -> pd.DataFrame | None:
    """The user's transcription of the paper's table (absent or empty → None)."""
    path = Path(path)
    if not path.is_file():
        return None
    paper = pd.read_csv(path, comment="#")
    return None if paper.empty else paper
