"""Figures from result rows and plans (matplotlib, Agg backend: works headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..evaluation.zeroshot import AVERAGE_TASK  # noqa: E402
from ..plan import PruningPlan  # noqa: E402
from .tables import METHOD_ORDER, method_label  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _latest(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return df.sort_values("timestamp").groupby(keys, as_index=False).last()


def metrics_vs_sparsity(rows: pd.DataFrame, path: str | Path, model: str | None = None) -> Path:
    """Zero-shot mean accuracy and each perplexity against sparsity, one line per method (dense at s=0)."""
    df = rows if model is None else rows[rows["model"] == model]
    df = df.assign(method=[method_label(p, g) for p, g in zip(df["pruner"], df["gamma"])])
    panels = [("zero-shot mean accuracy", df[df["task"] == AVERAGE_TASK], False)]
    ppl = df[df["metric"].astype(str).str.startswith("ppl/")]
    panels += [(f"perplexity {m.removeprefix('ppl/')}", ppl[ppl["metric"] == m], True) for m in sorted(ppl["metric"].unique())]
    panels = [p for p in panels if not p[1].empty]
    if not panels:
        raise ValueError("no zero-shot mean or perplexity rows to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, sub, log) in zip(axes[0], panels):
        sub = _latest(sub, ["method", "sparsity"])
        dense_value = sub[sub["method"] == "dense"]["value"]
        methods = sorted(set(sub["method"]) - {"dense"}, key=lambda m: (METHOD_ORDER + [m]).index(m.split(" ")[0]))
        for m in methods:
            line = sub[sub["method"] == m].sort_values("sparsity")
            xs, ys = list(line["sparsity"]), list(line["value"])
            if not dense_value.empty:
                xs, ys = [0.0, *xs], [float(dense_value.iloc[0]), *ys]
            ax.plot(xs, ys, marker="o", lw=1.8 if m.startswith("nirvana") else 1.2, label=m)
        if not dense_value.empty:
            ax.axhline(float(dense_value.iloc[0]), color="grey", ls=":", lw=1, label="dense")
        ax.set_title(title)
        ax.set_xlabel("sparsity (fraction of attention+MLP parameters)")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def allocation(plan: PruningPlan, path: str | Path) -> Path:
    """NIRVANA's adaptive allocation: kept attention groups and MLP width per layer."""
    idx = [lp.index for lp in plan.layers]
    fig, (a, m) = plt.subplots(1, 2, figsize=(10, 3.2))
    a.bar(idx, [len(lp.kept_groups) for lp in plan.layers], color="tab:blue")
    a.axhline(plan.layers[0].n_groups, color="grey", ls=":", lw=1)
    a.set_title("kept attention groups")
    m.bar(idx, [len(lp.kept_neurons) for lp in plan.layers], color="tab:orange")
    m.axhline(plan.layers[0].n_neurons, color="grey", ls=":", lw=1)
    m.set_title("kept MLP width")
    for ax in (a, m):
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{plan.model}: {plan.summary()}", fontsize=9)
    return _save(fig, path)


def gamma_ablation(rows: pd.DataFrame, path: str | Path, metric: str | None = None) -> Path:
    """A metric against γ for each sparsity (NIRVANA rows only)."""
    df = rows[rows["pruner"] == "nirvana"]
    if metric is None:
        metric = "average" if (df["task"] == AVERAGE_TASK).any() else sorted(df["metric"].unique())[0]
    sub = df[df["task"] == AVERAGE_TASK] if metric == "average" else df[df["metric"] == metric]
    if sub["gamma"].nunique() < 2:
        raise ValueError("γ ablation needs NIRVANA rows at two or more γ values")
    sub = _latest(sub, ["sparsity", "gamma"])
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for s, line in sub.groupby("sparsity"):
        line = line.sort_values("gamma")
        ax.plot(line["gamma"], line["value"], marker="o", label=f"s={s:g}")
    ax.set_xlabel("γ (MLP pruned fraction / attention pruned fraction)")
    ax.set_ylabel("zero-shot mean" if metric == "average" else metric)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def kl_vs_perplexity(rows: pd.DataFrame, path: str | Path, ppl_metric: str | None = None) -> Path:
    """Each pruned run's calibration KL (to the dense model, on the probe set) against its perplexity."""
    kl = rows[rows["metric"] == "kl/probe"]
    ppl = rows[rows["metric"].astype(str).str.startswith("ppl/")]
    if ppl_metric is None and not ppl.empty:
        ppl_metric = sorted(ppl["metric"].unique())[0]
    joined = kl[["run_id", "value", "calibration_source", "calibration_seed", "calibration_selection"]].merge(
        ppl[ppl["metric"] == ppl_metric][["run_id", "value"]], on="run_id", suffixes=("_kl", "_ppl"))
    if joined.empty:
        raise ValueError("no runs with both a kl/probe row and a perplexity row")
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for (source, selection), g in joined.groupby(["calibration_source", "calibration_selection"], dropna=False):
        ax.scatter(g["value_kl"], g["value_ppl"], label=f"{source} ({selection})", s=24)
    ax.set_xlabel("KL(dense ‖ pruned) on the probe set")
    ax.set_ylabel(ppl_metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
