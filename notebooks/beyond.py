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
# # Beyond the paper: γ and calibration chosen by KL
#
# NIRVANA has two hand-tuned levers in the official code: γ (the MLP/attention split of the budget) and the
# calibration draw. `gamma=auto` and `calibration.selection=kl` choose them by the KL divergence of each
# candidate plan to the dense model on a fixed probe set (docs/method.md §2–3). This notebook asks of the rows:
#
# 1. How does the KL vary across γ and across calibration draws, and which did the selection take?
# 2. Does a lower KL on the probe mean a lower perplexity on the evaluation texts, across recipes?
# 3. Where do the recipes land against the official recipe and FLAP (Table 2's rows)?
#
# **Rows** come from the beyond sweep (`conf/experiment/beyond.yaml`) and, for the official recipes, Table 2:
#
# ```
# make reproduce-beyond      # = python -m experiments.run -m experiment=beyond, then the report
# ```
#
# Only rows are read. Perplexity is measured only for each run's chosen plan, so (2) compares runs, not the
# candidates inside a run. Intervals for the comparisons are in `results/tables/beyond/` (paired bootstrap).
# `NIRVANA_RESULTS` points at another results folder with the same layout.

# %% tags=["parameters"]
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from nirvana.paths import REPO_ROOT
from nirvana.reporting import pairing
from nirvana.results import read_rows

RESULTS = Path(os.environ.get("NIRVANA_RESULTS", REPO_ROOT / "results"))
COMMAND = "make reproduce-beyond"
PPL = "ppl/wiki_passages@128"

# %%
beyond_files = sorted((RESULTS / "rows").glob("beyond_*.jsonl"))
beyond = pd.concat([read_rows(p) for p in beyond_files]) if beyond_files else pd.DataFrame()
if beyond.empty:
    raise FileNotFoundError(f"no result rows in {RESULTS / 'rows'}/beyond_*.jsonl: produce them with `{COMMAND}`")
models = sorted(beyond["model"].unique())
table2_files = sorted((RESULTS / "rows").glob("table2_*.jsonl"))
official = pd.concat([read_rows(p) for p in table2_files]) if table2_files else pd.DataFrame(columns=beyond.columns)
official = official[official["model"].isin(models) & official["dtype"].isin([None, "float32"])
                    & official["pruner"].isin(["nirvana", "flap"])].copy()
official["pruner"] = official["pruner"] + " (official)"
rows = pd.concat([beyond, official], ignore_index=True)
# the newest run wins when a recipe was run more than once at a sparsity (a run has several candidate rows)
newest = rows.sort_values("timestamp").groupby(["model", "pruner", "sparsity"])["run_id"].last()
rows = rows[rows["run_id"].isin(newest)]
print(f"{len(beyond)} beyond rows from {[p.name for p in beyond_files]}, {len(official)} official rows; "
      f"models {models}; recipes {sorted(beyond['pruner'].unique())}")

# %% [markdown]
# ## Table: each recipe at each sparsity
# Wiki-passage perplexity at 128 tokens (lower is better), the zero-shot mean, the KL of the chosen plan on the
# probe, the γ the run used and the fraction of parameters kept (recipes at one nominal sparsity can keep
# different fractions; compare at equal kept fractions).

# %%
wanted = {PPL: "wiki ppl@128", "mean_task_metric": "zero-shot mean", "kl/probe": "KL (probe)",
          "kept_fraction": "kept"}
cells = rows[rows["metric"].isin(wanted)].copy()
cells["metric"] = cells["metric"].map(wanted)
table = cells.pivot_table(index=["pruner", "sparsity"], columns="metric", values="value", aggfunc="last")
gammas = rows.dropna(subset=["gamma"]).groupby(["pruner", "sparsity"])["gamma"].last()
table["γ"] = gammas
table.style.format("{:.4g}", na_rep="—")

# %% [markdown]
# ## Plot: KL across γ (left) and across calibration draws (right)
# Left: every γ candidate's KL on the run's chosen calibration (`kl/gamma_candidate`), the chosen one ringed.
# Right: every calibration draw's KL (`kl/candidate`: at the recipe's γ, or its best γ under `gamma=auto`).

# %%
gamma_kl = rows[rows["metric"] == "kl/gamma_candidate"].copy()
draw_kl = rows[rows["metric"] == "kl/candidate"].copy()
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
for (pruner, s), g in gamma_kl.groupby(["pruner", "sparsity"]):
    g = g.assign(γ=g["extra"].map(lambda e: e["gamma"]), chosen=g["extra"].map(lambda e: e["chosen"]))
    g = g.sort_values("γ")
    (line,) = left.plot(g["γ"], g["value"], marker="o", ms=4, label=f"{pruner} s={s:g}")
    pick = g[g["chosen"]]
    left.scatter(pick["γ"], pick["value"], s=120, facecolors="none", edgecolors=line.get_color())
left.set_xscale("log")
left.set_yscale("log")
left.set_xlabel("γ")
left.set_ylabel("KL(dense ‖ pruned) on the probe")
left.set_title("γ candidates (chosen: ringed)")
left.grid(alpha=0.3)
if not gamma_kl.empty:
    left.legend(fontsize=7)
labels = sorted({f"{p} s={s:g}" for p, s in zip(draw_kl["pruner"], draw_kl["sparsity"])})
for i, label in enumerate(labels):
    g = draw_kl[[f"{p} s={s:g}" == label for p, s in zip(draw_kl["pruner"], draw_kl["sparsity"])]]
    chosen = g["extra"].map(lambda e: bool(e.get("chosen")))
    right.scatter([i] * int((~chosen).sum()), g.loc[~chosen, "value"], s=14, color="grey")
    right.scatter([i] * int(chosen.sum()), g.loc[chosen, "value"], s=60, marker="*", color="C3")
right.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
right.set_yscale("log")
right.set_ylabel("KL of each calibration draw's plan")
right.set_title("calibration draws (chosen: star)")
right.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Plot: does the probe KL predict perplexity across runs?
# One point per run (recipe × sparsity) measured on the same probe; the Spearman correlation is printed per
# sparsity (at a fixed sparsity a lower KL should mean a lower perplexity if the KL is a good selection target).

# %%
joined = pairing.kl_perplexity_pairs(rows, PPL)
fig, ax = plt.subplots(figsize=(5.2, 3.8))
for pruner, g in joined.groupby("pruner"):
    ax.scatter(g["value_kl"], g["value_ppl"], label=pruner, s=26)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("KL(dense ‖ pruned) on the probe")
ax.set_ylabel(PPL)
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
plt.tight_layout()
plt.show()
for s, g in joined.groupby("sparsity"):
    rho = g["value_kl"].corr(g["value_ppl"], method="spearman") if len(g) > 2 else float("nan")
    print(f"s={s:g}: {len(g)} runs, Spearman ρ(KL, perplexity) = {rho:.2f}")

# %% [markdown]
# ## Plan stability across calibration draws
# Runs that chose among calibration draws record how alike the draws' plans are: the mean pairwise IoU of the
# kept units (`plan_iou/attention`, `plan_iou/mlp`; 1 = every draw keeps the same units).

# %%
iou = rows[rows["metric"].astype(str).str.startswith("plan_iou/")]
if iou.empty:
    print("no plan_iou rows (none of these runs chose among calibration draws, or they predate the measurement)")
else:
    iou = iou.assign(kind=iou["metric"].str.removeprefix("plan_iou/"), draws=iou["n"])
    display(iou.pivot_table(index=["pruner", "sparsity", "draws"], columns="kind", values="value").round(3))
