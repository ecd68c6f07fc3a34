"""Figures from result rows and plans (matplotlib, Agg backend: works headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..evaluation.zeroshot import AVERAGE_TASK  # noqa: E402
from ..pipeline import method_name  # noqa: E402
from ..results import latest  # noqa: E402
from ..surgery.plan import PruningPlan  # noqa: E402
from . import pairing  # noqa: E402


class NoData(ValueError):
    """The rows hold nothing this figure plots (an optional figure is then skipped)."""


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def metrics_vs_sparsity(rows: pd.DataFrame, path: str | Path, model: str | None = None) -> Path:
    """Zero-shot mean accuracy and each perplexity against sparsity, one line per method (dense at s=0), with
    95 % bootstrap intervals as error bars (nirvana.reporting.pairing.long_table)."""
    return _save(metrics_figure(pairing.long_table(rows, model)), path)


def method_styles(methods) -> dict[str, dict]:
    """One colour (and line style past 20 methods) per method for every panel of a figure: panels measure
    different method sets (perplexity-only baselines have no zero-shot line), so a per-panel colour cycle would
    give one colour two meanings."""
    ordered = sorted(set(methods) - {"dense"}, key=pairing.method_rank)
    palette = plt.get_cmap("tab10" if len(ordered) <= 10 else "tab20").colors
    return {m: {"color": palette[i % len(palette)], "ls": ("-", "--", ":")[i // len(palette) % 3],
                "lw": 1.8 if m.startswith("nirvana") else 1.2} for i, m in enumerate(ordered)}


OFF_SCALE = 100  # perplexity panels end at this multiple of the dense model's: past it a model is broken, and
#                 plotting magnitude's 10⁶ squeezes every usable method into the bottom decade of the panel


def metrics_figure(long: pd.DataFrame):
    """The figure `metrics_vs_sparsity` saves, from a long table; one legend for all panels, below them. A
    perplexity panel ends at OFF_SCALE × dense; the legend marks the methods whose lines leave one with ↑."""
    panels = [("zero-shot mean accuracy", pairing.AVG_COLUMN, False)]
    panels += [(f"perplexity {c}", c, True) for c in sorted(c for c in long["column"].unique() if pairing.is_perplexity(c))]
    panels = [p for p in panels if (long["column"] == p[1]).any()]
    if not panels:
        raise NoData("no zero-shot mean or perplexity rows to plot")
    styles = method_styles(long[long["column"].isin([p[1] for p in panels])]["method"])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    handles, off_scale = {}, set()
    for ax, (title, column, log) in zip(axes[0], panels):
        sub = long[long["column"] == column]
        dense = sub[sub["method"] == "dense"]
        for m in sorted(set(sub["method"]) - {"dense"}, key=pairing.method_rank):
            line = pd.concat([dense, sub[sub["method"] == m].sort_values("sparsity")])
            err = [(line["value"] - line["lo"]).clip(lower=0).fillna(0), (line["hi"] - line["value"]).clip(lower=0).fillna(0)]
            handles[m] = ax.errorbar(line["sparsity"], line["value"], yerr=err, marker="o", capsize=2, label=m,
                                     **styles[m])
        if not dense.empty:
            handles["dense"] = ax.axhline(float(dense["value"].iloc[0]), color="grey", ls=":", lw=1, label="dense")
        ax.set_title(title)
        ax.set_xlabel("sparsity (fraction of attention+MLP parameters)")
        if log:
            ax.set_yscale("log")
            off_scale |= _cap_off_scale(ax, sub, dense)
        ax.grid(alpha=0.3)
    labels = sorted(handles, key=pairing.method_rank)
    fig.legend([handles[m] for m in labels], [f"{m} ↑" if m in off_scale else m for m in labels],
               loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 8), fontsize=8, frameon=False,
               title=f"↑ leaves a perplexity panel (above {OFF_SCALE}× dense)" if off_scale else None,
               title_fontsize=8)
    return fig


def _cap_off_scale(ax, sub: pd.DataFrame, dense: pd.DataFrame) -> set[str]:
    """End the panel at OFF_SCALE × dense when a line goes past it; the methods whose lines leave it."""
    if dense.empty:
        return set()
    cap = OFF_SCALE * float(dense["value"].iloc[0])
    gone = set(sub.loc[sub["value"] > cap, "method"])
    if gone:
        ax.set_ylim(top=cap)
    return gone


def paired_differences(rows: pd.DataFrame, path: str | Path, model: str | None = None,
                       against: str = pairing.REFERENCE) -> Path:
    """Each method's paired difference to its reference (`pairing.reference_of`; NIRVANA by default) at the same
    sparsity (Δ mean accuracy; perplexity ratio), with 95 % intervals: the question the table answers, as a
    forest plot."""
    long = pairing.long_table(rows, model, against)
    name = pairing.reference_name(against)
    panels = [(pairing.AVG_COLUMN, f"Δ zero-shot mean vs {name}", 0.0)]
    panels += [(c, f"{c}: ppl ÷ {name}'s", 1.0) for c in sorted(c for c in long["column"].unique() if pairing.is_perplexity(c))]
    panels = [p for p in panels if long[(long["column"] == p[0])]["delta"].notna().any()]
    if not panels:
        raise NoData(f"no paired differences to plot (no {name} rows, or no per-item results)")
    cells = forest_cells(long, [column for column, _, _ in panels])
    y_of = {cell: len(cells) - 1 - i for i, cell in enumerate(cells)}  # one row per cell, the same in every panel
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 3.4 * len(panels), 0.9 + 0.32 * len(cells)),
                             squeeze=False, sharey=True)
    for ax, (column, title, null) in zip(axes[0], panels):
        sub = long[(long["column"] == column) & long["delta"].notna()]
        for _, r in sub.iterrows():
            err = [[max(r["delta"] - r["delta_lo"], 0)], [max(r["delta_hi"] - r["delta"], 0)]]
            ax.errorbar([r["delta"]], [y_of[(r["method"], r["sparsity"])]], xerr=err, fmt="o", ms=4, capsize=2,
                        color="tab:red" if r["significant"] else "tab:grey")
        ax.axvline(null, color="black", lw=0.8)
        if null == 1.0:
            ratio_axis(ax, pd.concat([sub["delta"], sub["delta_lo"], sub["delta_hi"]]).dropna().tolist() + [null])
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(list(y_of.values()), [f"{m} @ {s:g}" for m, s in y_of], fontsize=7)
    axes[0][0].set_ylim(-0.6, len(cells) - 0.4)
    return _save(fig, path)


def ratio_axis(ax, values: list[float]) -> None:
    """An x axis for ratios: log at 1-2-5 steps when they span a decade or two, powers of 10 beyond; linear when
    all lie within a factor 1.5 (8-bit vs float: 0.998 … 1.003), where a log axis would label only "1"."""
    spread = max(values) / min(values)
    if spread < 1.5:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.4g}"))
        return
    ax.set_xscale("log")
    steps = (1.0, 2.0, 5.0) if spread < 300 else (1.0,)
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=steps))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def forest_cells(long: pd.DataFrame, columns: list[str]) -> list[tuple[str, float]]:
    """(method, sparsity) of every paired difference in any of `columns`, by sparsity then method: the rows of the
    forest plot, shared by its panels (a perplexity-only baseline gets a row with no zero-shot point)."""
    sub = long[long["column"].isin(columns) & long["delta"].notna()]
    return sorted(set(zip(sub["method"], sub["sparsity"])), key=lambda c: (c[1], c[0]))


def allocation(widths: dict[str, list[int]], title: str, path: str | Path) -> Path:
    """NIRVANA's adaptive allocation: kept attention groups and MLP width per layer (`PruningPlan.widths`)."""
    idx = list(range(len(widths["kept_groups"])))
    fig, (a, m) = plt.subplots(1, 2, figsize=(10, 3.2))
    a.bar(idx, widths["kept_groups"], color="tab:blue")
    a.axhline(max(widths["n_groups"]), color="grey", ls=":", lw=1)
    a.set_title("kept attention groups")
    m.bar(idx, widths["kept_neurons"], color="tab:orange")
    m.axhline(max(widths["n_neurons"]), color="grey", ls=":", lw=1)
    m.set_title("kept MLP width")
    for ax in (a, m):
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def allocation_name(pruner: str, sparsity: float) -> str:
    """allocation_<pruner>[_<variant>]_s<sparsity>.png: `pruner` as rows spell it (`wanda_sp:matched`)."""
    return f"allocation_{pruner.replace(':', '_')}_s{sparsity:g}.png"


def allocation_of_plan(plan: PruningPlan) -> tuple[str, dict, str]:
    """(figure name, widths, title) of a saved plan."""
    name = allocation_name(method_name(plan.pruner, plan.extra.get("variant")), plan.sparsity)
    return name, plan.widths(), f"{plan.model}: {plan.summary()}"


def _allocation_title(r) -> str:
    """The plan's own description where the row has it; backfilled rows carry widths without it."""
    plan = r["extra"].get("plan") or f"{r['pruner']} s={r['sparsity']:g}"
    return f"{r['model']}: {plan}"


def allocations_in_rows(rows: pd.DataFrame, model: str | None = None) -> list[tuple[str, dict, str]]:
    """(figure name, widths, title) for every pruned (pruner, sparsity) whose newest `kept_fraction` row records
    the per-layer widths (runs since the rows carried them; a quantized or recovered model has its plan's)."""
    df = rows[(rows["metric"] == "kept_fraction") & (rows["pruner"] != "dense")]
    if model is not None:
        df = df[df["model"] == model]
    df = df[[isinstance(e, dict) and "widths" in e for e in df["extra"]]]
    out = []
    for _, r in latest(df, ["model", "pruner", "sparsity"]).iterrows():
        out.append((allocation_name(r["pruner"], r["sparsity"]), r["extra"]["widths"], _allocation_title(r)))
    return out


def gamma_ablation(rows: pd.DataFrame, path: str | Path, metric: str | None = None) -> Path:
    """A metric against γ for each sparsity (rows of the method whose lever γ is: the reference, NIRVANA)."""
    df = rows[rows["pruner"] == pairing.REFERENCE]
    if df.empty:
        raise NoData(f"no {pairing.REFERENCE} rows")
    if metric is None:
        metric = "average" if (df["task"] == AVERAGE_TASK).any() else sorted(df["metric"].unique())[0]
    sub = df[df["task"] == AVERAGE_TASK] if metric == "average" else df[df["metric"] == metric]
    if sub["gamma"].nunique() < 2:
        raise NoData("γ ablation needs NIRVANA rows at two or more γ values")
    sub = latest(sub, ["sparsity", "gamma"])
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
    """Each pruned run's KL to the dense model against its perplexity (`pairing.kl_perplexity_pairs`), by calibration."""
    joined = pairing.kl_perplexity_pairs(rows, ppl_metric)
    if joined.empty:
        raise NoData("no runs with both a kl/probe row and a perplexity row")
    ppl_metric = ppl_metric or sorted(m for m in rows["metric"].unique() if str(m).startswith("ppl/"))[0]
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for (source, selection), g in joined.groupby(["calibration_source", "calibration_selection"], dropna=False):
        label = "no calibration data" if pd.isna(source) else f"{source} ({selection})"  # magnitude, random
        ax.scatter(g["value_kl"], g["value_ppl"], label=label, s=24)
    ax.set_xlabel("KL(dense ‖ pruned) on the probe set")
    ax.set_ylabel(ppl_metric)
    ax.set_yscale("log")  # perplexities of failed prunes are orders of magnitude above the rest
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def search_trace(runs: pd.DataFrame, path: str | Path) -> Path:
    """Per searched run (nirvana.reporting.search.searched_runs): the best's probe KL (left) and held-out
    perplexity (right) against the generation."""
    if runs.empty:
        raise NoData("no searched runs")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for _, r in runs.iterrows():
        label = f"{r['method']} s={r['sparsity']:g} seed {r['seed']}"
        gens = [e["generation"] for e in r["trace"]]
        axes[0].plot(gens, [e["kl"] for e in r["trace"]], label=label)
        held = [(e["generation"], e["heldout"]["ppl"]) for e in r["trace"] if "heldout" in e]
        if held:
            axes[1].plot(*zip(*held), label=label)
    axes[0].set(xlabel="generation", ylabel="probe KL of the best (fitness)")
    axes[1].set(xlabel="generation", ylabel="held-out perplexity of the best")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
