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
import tempfile
import warnings
from pathlib import Path

from IPython.display import Image, display

from nirvana.paths import REPO_ROOT
from nirvana.results import read_rows

warnings.filterwarnings("ignore", message="IProgress not found")  # from tqdm.auto, imported by nirvana.reporting
from nirvana.reporting import figures, pairing, tables  # noqa: E402

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
# ## Table 2 layout, with intervals and paired differences
# Task columns use the metric the official evaluation reports; `avg` is the zero-shot mean; `<set>@<len>`
# are perplexities (lower is better). Intervals are 95 % seeded bootstraps over items or windows; `Δ` and `÷`
# compare each method with NIRVANA at the same sparsity on the same items (`*`: the interval excludes no
# difference; `†`: the two remove different shares of parameters). The newest row wins when a cell was
# measured twice.

# %%
long = pairing.long_table(rows, MODEL)
display(tables.display_table(long))

# %% [markdown]
# ## Paired differences to NIRVANA, per task

# %%
paired = tables.paired_task_table(long)
display(paired if not paired.empty else "no NIRVANA rows with per-item results: nothing to pair with")

# %% [markdown]
# ## Relative to the dense model
# Zero-shot mean as a fraction of dense, perplexity as a multiple of dense.

# %%
wide = tables.table2(rows, MODEL)
dense = wide.xs("dense", level="method") if "dense" in wide.index.get_level_values("method") else None
if dense is None or dense.empty:
    print("no dense rows: nothing to normalise by")
else:
    rel = wide.drop(columns=[c for c in ("achieved_sparsity", "params_kept") if c in wide.columns])
    base = dense.iloc[0]
    for col in rel.columns:
        rel[col] = rel[col] / base[col]
    display(rel.style.format("{:.3f}").format_index("{:g}", level=1))

# %% [markdown]
# ## Plots: each metric against sparsity (error bars: 95 % intervals), and the paired differences

# %%
out = Path(tempfile.mkdtemp())
display(Image(str(figures.metrics_vs_sparsity(rows, out / "metrics.png", MODEL))))
try:
    display(Image(str(figures.paired_differences(rows, out / "paired.png", MODEL))))
except figures.NoData as e:
    print(e)
