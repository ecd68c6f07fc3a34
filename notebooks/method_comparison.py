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
# # Methods across sparsities: NIRVANA against the baselines
#
# The paper's Table 2 layout (one line per method and sparsity; zero-shot tasks, their mean, perplexities)
# and the same numbers as curves against sparsity.
#
# **Rows**: the offline demo and/or the Table 2 sweeps:
#
# ```
# make demo            # = python -m experiments.run -m experiment=demo     → results/demo/rows.jsonl
# make reproduce-table2 MODEL=llama3.1_8b                                   → results/rows/table2_<model>.jsonl
# ```
#
# Only rows are read. `NIRVANA_RESULTS` points at another results folder with the same layout;
# `NIRVANA_MODEL` picks a model when the rows hold several (default: the one with most rows).

# %% tags=["parameters"]
import os
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from nirvana.paths import REPO_ROOT
from nirvana.results import read_rows

warnings.filterwarnings("ignore", message="IProgress not found")  # from tqdm.auto, imported by nirvana.reporting
from nirvana.reporting import tables  # noqa: E402

RESULTS = Path(os.environ.get("NIRVANA_RESULTS", REPO_ROOT / "results"))
ROWS_FILES = [RESULTS / "demo" / "rows.jsonl", *sorted((RESULTS / "rows").glob("table2_*.jsonl"))]
MODEL = os.environ.get("NIRVANA_MODEL") or None
COMMAND = "python -m experiments.run -m experiment=demo"

# %%
rows = read_rows(ROWS_FILES)
if rows.empty:
    raise FileNotFoundError(f"no result rows in {[str(f) for f in ROWS_FILES]}: produce them with `{COMMAND}`")
counts = rows["model"].value_counts()
MODEL = MODEL or counts.index[0]
rows = rows[rows["model"] == MODEL]
print(f"model {MODEL} ({len(rows)} rows; all models: { {m: int(n) for m, n in counts.items()} })")
limits = rows["limit"].dropna().map(lambda v: f"{v:g}" if isinstance(v, float) else str(v)).unique()
if len(limits):
    print("limited protocol (do not compare with full-protocol or paper numbers):", list(limits))

# %% [markdown]
# ## Table 2 layout
# Task columns use the metric the official evaluation reports; `avg` is the zero-shot mean; `<set>@<len>`
# are perplexities (lower is better). The newest row wins when a cell was measured twice.

# %%
wide = tables.table2(rows, MODEL)
def fmt(x):
    return "–" if pd.isna(x) else f"{x:.4f}" if abs(x) < 1 else f"{x:.2f}"


wide.style.format(fmt).format_index("{:g}", level=1)

# %% [markdown]
# ## Relative to the dense model
# Zero-shot mean as a fraction of dense, perplexity as a multiple of dense.

# %%
dense = wide.xs("dense", level="method") if "dense" in wide.index.get_level_values("method") else None
if dense is None or dense.empty:
    print("no dense rows: nothing to normalise by")
else:
    rel = wide.copy()
    base = dense.iloc[0]
    for col in rel.columns:
        rel[col] = rel[col] / base[col]
    display(rel.style.format("{:.3f}").format_index("{:g}", level=1))

# %% [markdown]
# ## Plot: each metric against sparsity, one line per method

# %%
long = wide.reset_index().melt(id_vars=["method", "sparsity"], var_name="column", value_name="value").dropna()
panels = [c for c in ("avg",) if c in wide.columns] + [c for c in wide.columns if "@" in c]
panels = panels or list(wide.columns)[:3]
fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.5), squeeze=False)
for ax, col in zip(axes[0], panels):
    sub = long[long["column"] == col]
    d = sub[sub["method"] == "dense"]["value"]
    for method, line in sub[sub["method"] != "dense"].groupby("method", sort=False):
        line = line.sort_values("sparsity")
        xs, ys = list(line["sparsity"]), list(line["value"])
        if not d.empty:
            xs, ys = [0.0, *xs], [float(d.iloc[0]), *ys]
        ax.plot(xs, ys, marker="o", lw=2 if method.startswith("nirvana") else 1.2, label=method)
    if not d.empty:
        ax.axhline(float(d.iloc[0]), color="grey", ls=":", lw=1)
    ax.set_title("zero-shot mean" if col == "avg" else col)
    ax.set_xlabel("sparsity")
    if "@" in col:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
axes[0][0].legend(fontsize=8)
plt.tight_layout()
plt.show()
