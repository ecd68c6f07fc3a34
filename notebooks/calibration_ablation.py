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
# # Calibration ablation: source, seed, and KL-based selection
#
# NIRVANA's saliency needs a calibration batch; the paper picks calibration data whose pruned model has the
# lowest KL divergence to the dense model (docs/method.md §3). This notebook asks two questions of the rows:
#
# 1. Does KL to the dense model (measured on a held-out probe set) predict perplexity? (scatter + rank correlation)
# 2. Does selecting calibration by KL beat a random seed? (KL-selected vs the spread over seeds)
#
# **Rows** come from the sweep in `conf/experiment/ablation_calibration.yaml`:
#
# ```
# python -m experiments.run -m experiment=ablation_calibration      # → results/rows/ablation_calibration.jsonl
# ```
#
# Only rows are read. `NIRVANA_RESULTS` points at another results folder with the same layout.

# %% tags=["parameters"]
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from nirvana.paths import REPO_ROOT
from nirvana.results import read_rows

RESULTS = Path(os.environ.get("NIRVANA_RESULTS", REPO_ROOT / "results"))
ROWS_FILE = RESULTS / "rows" / "ablation_calibration.jsonl"
COMMAND = "python -m experiments.run -m experiment=ablation_calibration"

# %%
rows = read_rows(ROWS_FILE)
if rows.empty:
    raise FileNotFoundError(f"no result rows in {ROWS_FILE}: produce them with `{COMMAND}`")
rows = rows[rows["pruner"] != "dense"].assign(
    calibration_selection=lambda d: d["calibration_selection"].fillna("none"),
    calibration_seed=lambda d: d["calibration_seed"].fillna(-1).astype(int))
print(f"{len(rows)} rows, {rows['run_id'].nunique()} runs from {ROWS_FILE}")

# %% [markdown]
# ## One line per run: calibration, its KL to the dense model, its perplexities

# %%
keys = ["run_id", "model", "sparsity", "calibration_source", "calibration_seed", "calibration_selection"]
latest = rows.sort_values("timestamp").groupby(["run_id", "metric"], as_index=False).last()
runs = latest.pivot_table(index=keys, columns="metric", values="value").reset_index()
ppl_metrics = sorted(c for c in runs.columns if str(c).startswith("ppl/"))
if "kl/probe" not in runs.columns or not ppl_metrics:
    raise ValueError("the rows hold no kl/probe or no perplexity: was the sweep run with measure_kl=true?")
PPL = ppl_metrics[0]  # the first perplexity drives the plots; the table shows all
runs = runs.sort_values(["calibration_source", "calibration_selection", "calibration_seed"])
runs[keys[2:] + ["kl/probe"] + ppl_metrics].style.format(
    {"sparsity": "{:g}", "kl/probe": "{:.5f}", **{m: "{:.2f}" for m in ppl_metrics}}).hide(axis="index")

# %% [markdown]
# ## Does KL predict perplexity?
# Spearman rank correlation between KL and perplexity over the runs of each source. Positive means lower KL
# goes with lower perplexity, which is what KL-based selection relies on. Each source has one fixed probe (the
# same windows for every run and candidate of that source, never used for calibration or evaluation), so KL
# values compare within a source, not across sources.

# %%
def spearman(a: pd.Series, b: pd.Series) -> float:
    return float(a.rank().corr(b.rank())) if len(a) > 2 else float("nan")


corr = [{"source": src, "sparsity": s, "runs": len(g),
         **{f"ρ(KL, {m})": spearman(g["kl/probe"], g[m]) for m in ppl_metrics}}
        for (src, s), g in runs.groupby(["calibration_source", "sparsity"])]
pd.DataFrame(corr).style.format(precision=3).format({"sparsity": "{:g}"}).hide(axis="index")

# %% [markdown]
# ## KL-selected calibration vs random seeds
# For each source: the mean perplexity of the runs whose calibration was selected by KL (`kl`, and
# `kl_per_sample` when present) next to the mean, best and worst over plain seeds (`none`).

# %%
summary = []
selections = [s for s in sorted(runs["calibration_selection"].unique()) if s != "none"]
for (src, s), g in runs.groupby(["calibration_source", "sparsity"]):
    plain = g[g["calibration_selection"] == "none"][PPL]
    row = {"source": src, "sparsity": s, "seeds": len(plain), f"mean {PPL}": plain.mean(),
           "best seed": plain.min(), "worst seed": plain.max()}
    for sel in selections:
        row[f"{sel}-selected"] = g[g["calibration_selection"] == sel][PPL].mean()
    summary.append(row)
pd.DataFrame(summary).style.format(precision=2).format({"sparsity": "{:g}"}).hide(axis="index")

# %% [markdown]
# ## Candidates scored during KL selection
# When the sweep ran with `calibration.selection=kl`, each candidate's KL is a `kl/candidate` row.

# %%
cand = rows[rows["metric"] == "kl/candidate"]
if cand.empty:
    print("no kl/candidate rows (no run used calibration.selection=kl)")
else:
    cand = cand.assign(label=[e.get("label") for e in cand["extra"]], chosen=[e.get("chosen") for e in cand["extra"]])
    display(cand[["calibration_source", "run_id", "label", "value", "chosen"]]
            .rename(columns={"value": "KL"}).sort_values(["run_id", "KL"]).reset_index(drop=True))

# %% [markdown]
# ## Plot: KL to the dense model against perplexity

# %%
fig, ax = plt.subplots(figsize=(5.6, 4))
markers = {"none": "o", "kl": "*"}
colors = {src: f"C{i}" for i, src in enumerate(sorted(runs["calibration_source"].unique()))}
for (src, sel), g in runs.groupby(["calibration_source", "calibration_selection"]):
    ax.scatter(g["kl/probe"], g[PPL], marker=markers.get(sel, "s"), s=30 if sel == "none" else 110,
               color=colors[src], edgecolor="k" if sel != "none" else None,
               label=f"{src} ({'seed' if sel == 'none' else sel + '-selected'})")
ax.set_xlabel("KL(dense ‖ pruned) on the probe set")
ax.set_ylabel(PPL)
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
