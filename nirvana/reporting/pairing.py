"""Which numbers a comparison puts side by side, and on what evidence: the cells of the result rows, each with
its 95 % interval, and each method's paired difference to its reference at the same sparsity.

A cell is (method, sparsity, column): the method's label (`method_label`: pruner, NIRVANA's γ, and the stages after
pruning), and the column it fills — each task's official metric (nirvana.evaluation.zeroshot.TASK_METRICS), their
mean, each perplexity under its protocol name (`wiki_passages@128`), the parameters kept. Every statistic comes
from the per-item results stored in the rows (docs/protocol.md):
- the mean over tasks and each perplexity with a 95 % bootstrap interval (nirvana.reporting.stats);
- each method's paired difference to its reference at the same sparsity, on the same items: Δ mean accuracy, and
  the perplexity ratio, each with its interval; `significant` where the interval excludes 0 (ratio: 1).
  The reference (`reference_of`) is NIRVANA by default, any other pruner's label (`flap:kl`), or `base`: the
  same pruned model before quantization or recovery — the question each table asks;
- `unequal` where the two remove different shares of parameters (achieved sparsities more than a point apart).
When the same cell was measured more than once, the newest row wins (`nirvana.results.latest`). Tables
(nirvana.reporting.tables) and figures (nirvana.reporting.figures) render this long table; neither pairs anything.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from ..evaluation.zeroshot import AVERAGE_TASK, TASK_METRICS
from ..pruners import PRUNERS
from ..results import latest
from . import stats

METHOD_ORDER = ["dense", *PRUNERS]  # tables list methods in the registry's order


REFERENCE = "nirvana"  # the method every other one is paired against, unless a table names another


BASE_REFERENCE = "base"  # pair each quantized or recovered model with the same pruned model without that


AVG_COLUMN, KEPT_COLUMN, ACHIEVED_COLUMN = "avg", "params_kept", "achieved_sparsity"


UNEQUAL = 0.01  # achieved sparsities further apart than this make an unequal comparison


def is_perplexity(column: str) -> bool:
    """Perplexity columns are named `<text set>@<sequence length>`; their paired statistic is a ratio (null 1)."""
    return "@" in column


FLOAT_DTYPES = (None, "float32", "bfloat16", "float16")


def method_label(pruner: str, gamma, dtype: str | None = None, recovery: str | None = None) -> str:
    """The table's name of a run: its pruner (with variant), NIRVANA's with its γ, then in brackets what was done
    after pruning: LoRA recovery (the rows' extra.recovery) and quantization (their dtype), e.g.
    `nirvana (γ=3.36) [w8a8]`, `flap [lora_offline]`."""
    label = pruner if pruner != "nirvana" or gamma is None or pd.isna(gamma) else f"nirvana (γ={gamma:g})"
    stages = [x for x in (recovery, None if dtype in FLOAT_DTYPES or pd.isna(dtype) else dtype) if x]
    return f"{label} [{'+'.join(stages)}]" if stages else label


def cell_column(row: pd.Series) -> str | None:
    """Which Table-2 column a result row fills (None: not a table cell)."""
    if row["task"] == AVERAGE_TASK:
        return AVG_COLUMN
    if row["task"] == "pruning" and row["metric"] in ("kept_fraction", ACHIEVED_COLUMN):
        return KEPT_COLUMN if row["metric"] == "kept_fraction" else ACHIEVED_COLUMN
    if row["task"] in TASK_METRICS and row["metric"] == TASK_METRICS[row["task"]]:
        return row["task"]
    if isinstance(row["metric"], str) and row["metric"].startswith("ppl/"):
        return row["metric"].removeprefix("ppl/")
    return None


def labelled(rows: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """The table cells' rows of `model` (all models: None), with the columns `column` (cell_column) and `method`
    (method_label) added; every row of a cell is kept (the draw-aware view keeps one per calibration draw)."""
    if rows.empty:
        raise ValueError("no result rows to tabulate")
    df = rows if model is None else rows[rows["model"] == model]
    if df.empty:
        raise ValueError(f"no rows for model {model!r}; models present: {sorted(rows['model'].dropna().unique())}")
    df = df.assign(column=df.apply(cell_column, axis=1)).dropna(subset=["column"])
    dtypes = df["dtype"] if "dtype" in df else [None] * len(df)
    recovered = [e.get("recovery") if isinstance(e, dict) else None for e in df["extra"]]
    return df.assign(method=[method_label(*x) for x in zip(df["pruner"], df["gamma"], dtypes, recovered)])


def cells(rows: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """The newest row of every (method, sparsity, column), with the columns `method` and `column` added."""
    df = labelled(rows, model)
    _warn_shared_labels(df)
    df = latest(df, ["method", "sparsity", "column"])
    known = set(zip(df[df["column"] == KEPT_COLUMN]["method"], df[df["column"] == KEPT_COLUMN]["sparsity"]))
    unknown = sorted({(m, s) for m, s in zip(df["method"], df["sparsity"]) if (m, s) not in known and m != "dense"})
    if unknown:
        raise ValueError(f"pruned models without pruning rows (evaluated without their plan?): {unknown}; the "
                         "parameters kept unknown — evaluate the checkpoint folder that holds its pruning_plan.json")
    return df


def _warn_shared_labels(df: pd.DataFrame) -> None:
    """Warn where runs with different ids (different settings: nirvana.evaluation.protocol.run_identity) fill the
    same cell: only the newest shows, silently standing in for the other — e.g. a `pruner.bias_compensation=true`
    override run under nirvana_kl's label. A re-measurement of one run keeps its id and stays quiet."""
    runs = df.groupby(["model", "method", "sparsity"], dropna=False)["run_id"].unique()
    shared = {key: sorted(ids) for key, ids in runs.items() if len(ids) > 1}
    if shared:
        listed = "; ".join(f"{m} {label} s={s:g}: runs {', '.join(ids)}" for (m, label, s), ids in shared.items())
        seeds = df.groupby(["model", "method", "sparsity"], dropna=False)["calibration_seed"].nunique()
        draws = " Runs of several calibration draws: `experiments.report --draws` averages them (docs/protocol.md)." \
            if (seeds > 1).any() else ""
        warnings.warn(f"different runs share a table label, the newest row of each cell wins — {listed}. Give "
                      f"one a `pruner.variant=<name>` to keep them apart, or drop the stale rows.{draws}", stacklevel=3)


def _items(row) -> list[float] | None:
    extra = row["extra"] if isinstance(row["extra"], dict) else {}
    return extra.get("items")


def _windows(row) -> tuple[list[float] | None, int | None]:
    extra = row["extra"] if isinstance(row["extra"], dict) else {}
    return extra.get("window_nll"), extra.get("window_tokens")


def _interval(row) -> stats.Interval:
    """A cell's value with its 95 % interval: bootstrap over its items/windows when the row carries them,
    else lm-eval's stderr (±1.96 se), else none (lo = hi = nan)."""
    items = _items(row)
    if items:
        return stats.mean_of_tasks({row["task"]: items})
    nll, tokens = _windows(row)
    if nll and tokens:
        return stats.perplexity(nll, tokens)
    se = row["stderr"]
    if se is not None and not pd.isna(se):
        return stats.Interval(row["value"], row["value"] - 1.96 * se, row["value"] + 1.96 * se)
    return stats.Interval(row["value"], math.nan, math.nan)


def long_table(rows: pd.DataFrame, model: str | None = None, against: str = REFERENCE) -> pd.DataFrame:
    """One line per (method, sparsity, column): value, interval, and the paired difference to the reference
    (`reference_of`), with the reference's label in `reference`."""
    df = cells(rows, model)
    out = []
    for (method, sparsity), group in df.groupby(["method", "sparsity"], sort=False):
        by_col = {r["column"]: r for _, r in group.iterrows()}
        task_items = {c: _items(r) for c, r in by_col.items() if c in TASK_METRICS and _items(r)}
        for column, r in by_col.items():
            if column == AVG_COLUMN and task_items and len(task_items) == sum(c in TASK_METRICS for c in by_col):
                iv = stats.mean_of_tasks(task_items)
            else:
                iv = _interval(r)
            out.append({"method": method, "sparsity": sparsity, "column": column, "value": r["value"], "lo": iv.lo,
                        "hi": iv.hi, "n": r["n"], "limit": r["limit"], "run_id": r["run_id"],
                        "git_hash": r["git_hash"]})
    long = pd.DataFrame(out)
    return _with_paired(long, df, against).assign(
        reference=lambda x: [reference_of(m, x["method"].unique(), against) for m in x["method"]])


def _split_stages(method: str) -> tuple[str, str | None]:
    """`nirvana (γ=3.36) [w8a8]` → (`nirvana (γ=3.36)`, `w8a8`); a model used as pruned has no stages."""
    if method.endswith("]") and " [" in method:
        base, scheme = method.rsplit(" [", 1)
        return base, scheme[:-1]
    return method, None


def reference_of(method: str, methods, against: str = REFERENCE) -> str | None:
    """The method that `method` is paired with (None: itself the reference, or none present). `against` is a
    pruner's label (`nirvana`, `flap:kl`: that pruner's model after the same stages — recovery, quantization —,
    the first by label if several γ are present) or `base` (the same pruned model without those stages)."""
    base, scheme = _split_stages(method)
    if against == BASE_REFERENCE:
        return base if scheme is not None and base in set(methods) else None
    refs = sorted(m for m in methods if _split_stages(m)[1] == scheme and m.split(" ")[0] == against)
    return refs[0] if refs and refs[0] != method else None


def check_reference(methods, against: str) -> None:
    """Refuse a reference that no row can serve (a typo would otherwise give a table without comparisons)."""
    methods = list(methods)
    if against == BASE_REFERENCE:
        if not any(_split_stages(m)[1] for m in methods):
            raise ValueError("reference base: no quantized or recovered models in the rows to pair with the "
                             "models they came from")
    elif not any(m.split(" ")[0] == against for m in methods):
        present = sorted({m.split(" ")[0] for m in methods})
        raise ValueError(f"reference {against!r}: no such method in the rows; present: {present} (or base)")


def reference_name(against: str) -> str:
    return {REFERENCE: "NIRVANA", BASE_REFERENCE: "base"}.get(against, against)


def _with_paired(long: pd.DataFrame, df: pd.DataFrame, against: str = REFERENCE) -> pd.DataFrame:
    long = long.assign(delta=math.nan, delta_lo=math.nan, delta_hi=math.nan, significant=False, unequal=False)
    methods = long["method"].unique()
    rows = {(r["method"], r["sparsity"], r["column"]): r for _, r in df.iterrows()}
    for i, line in long.iterrows():
        method, s, column = line["method"], line["sparsity"], line["column"]
        ref = reference_of(method, methods, against)
        if ref is None or rows.get((ref, s, column)) is None:
            continue
        iv = _paired(rows, method, ref, s, column)
        if iv is not None:
            null = 1.0 if is_perplexity(column) else 0.0
            long.loc[i, ["delta", "delta_lo", "delta_hi"]] = iv.value, iv.lo, iv.hi
            long.loc[i, "significant"] = iv.excludes(null)
        mine, theirs = rows.get((method, s, ACHIEVED_COLUMN)), rows.get((ref, s, ACHIEVED_COLUMN))
        if mine is not None and theirs is not None:
            long.loc[i, "unequal"] = abs(mine["value"] - theirs["value"]) > UNEQUAL
    return long


def evidence(rows, method, s, column):
    """What a cell is computed from: {task: items} for a task or the mean over tasks, (window NLLs, tokens per
    window) for a perplexity; None where the rows do not carry it."""
    if column in TASK_METRICS or column == AVG_COLUMN:
        tasks = [column] if column in TASK_METRICS else list(TASK_METRICS)
        items = {t: _items(rows[(method, s, t)]) for t in tasks if (method, s, t) in rows}
        return items if items and all(items.values()) else None
    if is_perplexity(column) and (method, s, column) in rows:
        nll, tokens = _windows(rows[(method, s, column)])
        return (np.asarray(nll, dtype=float), tokens) if nll and tokens else None
    return None


def _same_items(a, b) -> bool:
    if a is None or b is None or isinstance(a, dict) != isinstance(b, dict):
        return False
    if isinstance(a, dict):
        return sorted(a) == sorted(b) and all(len(a[t]) == len(b[t]) for t in a)
    return len(a[0]) == len(b[0]) and a[1] == b[1]


def compare(a, b) -> stats.Interval | None:
    """a vs b on the same items: the difference of the mean over tasks, or the perplexity ratio (None: not paired)."""
    if not _same_items(a, b):
        return None
    return stats.paired_difference(a, b) if isinstance(a, dict) else stats.perplexity_ratio(a[0], b[0], a[1])


def minus(a, b):
    """Item by item a − b, in the evidence's own form: what a stage changed on each item (None: not paired)."""
    if not _same_items(a, b):
        return None
    if isinstance(a, dict):
        return {t: (np.asarray(a[t], dtype=float) - np.asarray(b[t], dtype=float)).tolist() for t in a}
    return a[0] - b[0], a[1]


def _paired(rows, method, ref, s, column) -> stats.Interval | None:
    return compare(evidence(rows, method, s, column), evidence(rows, ref, s, column))


def method_rank(method: str) -> tuple[int, str]:
    """Sort key for a method label: its family's place in METHOD_ORDER (unknown families last), then the full
    label — a total order, so variants of one family ("nirvana", "nirvana γ=auto") never fall back to the order a
    set happened to iterate in (string hashing differs per process: figures would change colour on each report)."""
    family = method.split(" ")[0].split(":")[0]
    return (METHOD_ORDER.index(family) if family in METHOD_ORDER else len(METHOD_ORDER), method)


def table_order(keys) -> list:
    """(method, sparsity) keys as every table lists them: by sparsity, then `method_rank`."""
    return sorted(keys, key=lambda k: (k[1], *method_rank(k[0])))


def kl_perplexity_pairs(rows: pd.DataFrame, ppl_metric: str | None = None) -> pd.DataFrame:
    """One line per pruned run measured on the most common probe (KLs on different probes do not compare): its
    columns, `value_kl` (kl/probe) and `value_ppl` (`ppl_metric`, default the first perplexity metric)."""
    kl = rows[rows["metric"] == "kl/probe"]
    probe = kl["extra"].map(lambda e: (e.get("probe") or {}).get("sha256") if isinstance(e, dict) else None)
    if probe.notna().any():
        kl = kl[probe == probe.mode().iloc[0]]
    ppl = rows[rows["metric"].astype(str).str.startswith("ppl/")]
    if ppl_metric is None and not ppl.empty:
        ppl_metric = sorted(ppl["metric"].unique())[0]
    columns = ["run_id", "value", "pruner", "sparsity", "calibration_source", "calibration_seed",
               "calibration_selection"]
    return kl[columns].merge(ppl[ppl["metric"] == ppl_metric][["run_id", "value"]], on="run_id",
                             suffixes=("_kl", "_ppl"))
