"""The paper's Table 2 layout from tidy rows: one line per (method, sparsity), columns = tasks + mean + ppl.

Each task shows the metric the official evaluation reports (nirvana.evaluation.zeroshot.TASK_METRICS);
perplexities appear under their protocol names (`wiki_passages@128`). When the same cell was measured
more than once, the newest row wins. If the user adds the paper's numbers to `results/paper/table2.csv`
(columns: model, method, sparsity, column, value — see results/paper/README.md), a second table puts them
side by side with our numbers and the difference.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation.zeroshot import AVERAGE_TASK, TASK_METRICS

METHOD_ORDER = ["dense", "nirvana", "magnitude", "taylor", "wanda_sp", "flap", "random"]
AVG_COLUMN = "avg"
KEPT_COLUMN = "params_kept"  # methods round differently: the sparsity asked for is not always what you get


def cell_column(row: pd.Series) -> str | None:
    """Which Table-2 column a result row fills (None: not a table cell)."""
    if row["task"] == AVERAGE_TASK:
        return AVG_COLUMN
    if row["task"] == "pruning" and row["metric"] == "kept_fraction":
        return KEPT_COLUMN
    if row["task"] in TASK_METRICS and row["metric"] == TASK_METRICS[row["task"]]:
        return row["task"]
    if isinstance(row["metric"], str) and row["metric"].startswith("ppl/"):
        return row["metric"].removeprefix("ppl/")
    return None


def method_label(pruner: str, gamma) -> str:
    return pruner if pruner != "nirvana" or gamma is None or pd.isna(gamma) else f"nirvana (γ={gamma:g})"


def table2(rows: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """Wide table indexed by (method, sparsity); columns ordered tasks, avg, then perplexities."""
    if rows.empty:
        raise ValueError("no result rows to tabulate")
    df = rows if model is None else rows[rows["model"] == model]
    if df.empty:
        raise ValueError(f"no rows for model {model!r}; models present: {sorted(rows['model'].unique())}")
    df = df.assign(column=df.apply(cell_column, axis=1)).dropna(subset=["column"])
    df = df.assign(method=[method_label(p, g) for p, g in zip(df["pruner"], df["gamma"])])
    df = df.sort_values("timestamp").groupby(["method", "sparsity", "column"], as_index=False).last()
    wide = df.pivot(index=["method", "sparsity"], columns="column", values="value")
    tasks = [t for t in TASK_METRICS if t in wide.columns]
    ppl = sorted(c for c in wide.columns if "@" in c)
    kept = [KEPT_COLUMN] if KEPT_COLUMN in wide.columns else []
    if kept:
        wide[KEPT_COLUMN] = wide[KEPT_COLUMN].fillna(1.0)  # the dense model keeps everything
    wide = wide[kept + tasks + ([AVG_COLUMN] if AVG_COLUMN in wide.columns else []) + ppl]
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    keys = sorted(wide.index, key=lambda k: (k[1], order.get(k[0].split(" ")[0], 99), k[0]))
    return wide.loc[keys]


def with_paper(ours: pd.DataFrame, paper: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """Ours | paper | Δ for every cell the paper file provides (long format, one line per cell)."""
    p = paper if model is None else paper[paper["model"] == model]
    long = ours.stack().rename("ours").reset_index().rename(columns={"column": "column"})
    merged = long.merge(p.rename(columns={"value": "paper"})[["method", "sparsity", "column", "paper"]],
                        on=["method", "sparsity", "column"], how="inner")
    return merged.assign(delta=merged["ours"] - merged["paper"])


def _fmt(x) -> str:
    if pd.isna(x):
        return "–"
    return f"{x:.4f}" if abs(x) < 1 else f"{x:.2f}"


def to_markdown(wide: pd.DataFrame) -> str:
    head = ["method", "sparsity", *wide.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (method, sparsity), values in wide.iterrows():
        lines.append("| " + " | ".join([method, f"{sparsity:g}", *(_fmt(v) for v in values)]) + " |")
    return "\n".join(lines) + "\n"


def write_table(wide: pd.DataFrame, out_dir: str | Path, name: str = "table2") -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.tex"]
    paths[0].write_text(to_markdown(wide))
    wide.to_csv(paths[1], float_format="%.6g")
    paths[2].write_text(wide.to_latex(float_format=lambda x: _fmt(x)))
    return paths


def read_paper(path: str | Path) -> pd.DataFrame | None:
    """The user's transcription of the paper's table (absent or empty → None)."""
    path = Path(path)
    if not path.is_file():
        return None
    paper = pd.read_csv(path, comment="#")
    return None if paper.empty else paper
