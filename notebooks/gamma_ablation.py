# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # γ ablation: how NIRVANA splits the pruning budget between attention and MLP
#
# γ sets the MLP pruned fraction to γ × the attention pruned fraction (docs/method.md §2); the total
# budget (the sparsity) stays fixed, so γ only moves parameters between the two module types.
#
# **Rows** come from the sweep in `conf/experiment/ablation_gamma.yaml`:
#
# ```
# python -m experiments.run -m experiment=ablation_gamma      # → results/rows/ablation_gamma.jsonl
# ```
#
# This notebook reads only those rows (nothing is recomputed). Set `NIRVANA_RESULTS` to read another results
# folder with the same layout (`rows/ablation_gamma.jsonl`).

# %% tags=["parameters"]
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from nirvana.paths import REPO_ROOT
from nirvana.results import read_rows

RESULTS = Path(os.environ.get("NIRVANA_RESULTS", REPO_ROOT / "results"))
ROWS_FILE = RESULTS / "rows" / "ablation_gamma.jsonl"
COMMAND = "python -m experiments.run -m experiment=ablation_gamma"

# %%
rows = read_rows(ROWS_FILE)
if rows.empty:
    raise FileNotFoundError(f"no result rows in {ROWS_FILE}: produce them with `{COMMAND}`")
rows = rows[rows["pruner"] == "nirvana"]
# the newest row wins when a cell was measured more than once
rows = rows.sort_values("timestamp").groupby(["model", "sparsity", "gamma", "metric"], as_index=False).last()
print(f"{len(rows)} rows from {ROWS_FILE}; models {sorted(rows['model'].unique())}; "
      f"γ {sorted(map(float, rows['gamma'].unique()))}; sparsities {sorted(map(float, rows['sparsity'].unique()))}")
limits = rows["limit"].dropna().unique()
if len(limits):
    print("limited protocol (do not compare with full-protocol numbers):", list(limits))

# %% [markdown]
# ## Table: each metric by γ (rows) and sparsity (columns)
# Perplexities (`ppl/<set>@<seq_len>`, lower is better), the zero-shot mean when the sweep measured it, and
# the KL of the pruned model to the dense one on the calibration probe set.

# %%
wanted = rows[rows["metric"].str.startswith(("ppl/", "kl/probe", "mean_task_metric", "kept_fraction"))]
table = wanted.pivot_table(index="gamma", columns=["metric", "sparsity"], values="value")
table.style.format("{:.4g}").format_index("{:g}", axis=0).format_index("{:g}", axis=1, level=1)

# %% [markdown]
# ## Best γ per sparsity

# %%
ppl_metrics = sorted(m for m in rows["metric"].unique() if m.startswith("ppl/"))
best = []
for (model, metric, s), g in rows[rows["metric"].isin(ppl_metrics)].groupby(["model", "metric", "sparsity"]):
    top = g.loc[g["value"].idxmin()]
    best.append({"model": model, "metric": metric, "sparsity": s, "best γ": top["gamma"], "ppl": top["value"],
                 "worst γ": g.loc[g["value"].idxmax(), "gamma"], "ppl (worst)": g["value"].max()})
pd.DataFrame(best).style.format(precision=2).format({"sparsity": "{:g}", "best γ": "{:g}", "worst γ": "{:g}"})

# %% [markdown]
# ## Plot: perplexity against γ, one line per sparsity

# %%
panels = ppl_metrics + (["mean_task_metric"] if (rows["metric"] == "mean_task_metric").any() else [])
fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False)
for ax, metric in zip(axes[0], panels):
    sub = rows[rows["metric"] == metric]
    for (model, s), line in sub.groupby(["model", "sparsity"]):
        line = line.sort_values("gamma")
        ax.plot(line["gamma"], line["value"], marker="o", label=f"{model} s={s:g}")
    ax.set_xscale("log")
    ax.set_xlabel("γ (MLP pruned fraction / attention pruned fraction)")
    ax.set_title(metric if metric != "mean_task_metric" else "zero-shot mean accuracy")
    if metric.startswith("ppl/"):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
axes[0][0].legend(fontsize=8)
plt.tight_layout()
plt.show()
