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
# # NIRVANA's per-layer allocation, from pruning plans
#
# NIRVANA ranks attention groups and MLP neurons of **all** layers in one pool per module type, so layers
# lose different amounts (docs/method.md §2). The `uniform` allocator of the ablation removes the same
# fractions from every layer. This notebook draws the kept widths per layer straight from the saved plans
# (`pruning_plan.json`) and puts each plan's perplexity beside it.
#
# **Inputs**, produced by the sweep in `conf/experiment/ablation_allocation.yaml`:
#
# ```
# python -m experiments.run -m experiment=ablation_allocation
#   # rows  → results/rows/ablation_allocation.jsonl
#   # plans → outputs/ablation_allocation/<time>/<job>/pruning_plan.json (each next to that run's rows.jsonl)
# ```
#
# Plans are joined to rows by run id through the `rows.jsonl` in the plan's run folder (rows do not record
# the allocator). `NIRVANA_RESULTS` points at another results folder; `NIRVANA_PLANS` is a glob of plan files.

# %% tags=["parameters"]
import glob
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from nirvana.paths import REPO_ROOT
from nirvana.surgery.plan import PruningPlan
from nirvana.results import iter_rows, read_rows

RESULTS = Path(os.environ.get("NIRVANA_RESULTS", REPO_ROOT / "results"))
ROWS_FILE = RESULTS / "rows" / "ablation_allocation.jsonl"
PLANS_GLOB = os.environ.get("NIRVANA_PLANS", str(REPO_ROOT / "outputs" / "ablation_allocation" / "*" / "*"
                                                  / "pruning_plan.json"))
COMMAND = "python -m experiments.run -m experiment=ablation_allocation"

# %%
plan_files = sorted(glob.glob(PLANS_GLOB))
if not plan_files:
    raise FileNotFoundError(f"no result rows / plans matching {PLANS_GLOB}: produce them with `{COMMAND}`")
rows = read_rows(ROWS_FILE)

plans, summary = {}, []
for f in plan_files:
    plan = PruningPlan.load(f)
    run_ids = {r["run_id"] for r in iter_rows(Path(f).parent / "rows.jsonl")}
    run_id = next(iter(run_ids)) if len(run_ids) == 1 else None
    label = f"{plan.allocator} s={plan.sparsity:g} γ={plan.gamma:g}"
    if label in plans:  # the same setting twice (another model, a rerun): keep both apart
        label += f" ({plan.model}, {Path(f).parent.name})"
    plans[label] = plan
    summary.append({"plan": label, "allocator": plan.allocator, "sparsity": plan.sparsity, "gamma": plan.gamma,
                    "run_id": run_id, "pruned groups": plan.pruned_groups, "pruned neurons": plan.pruned_neurons,
                    "kept params": plan.kept_fraction,
                    "min MLP width": min(len(lp.kept_neurons) for lp in plan.layers),
                    "max MLP width": max(len(lp.kept_neurons) for lp in plan.layers)})
summary = pd.DataFrame(summary)
print(f"{len(plans)} plans from {PLANS_GLOB}; {len(rows)} rows from {ROWS_FILE}")

# %% [markdown]
# ## Table: each plan, its budget and the perplexity of the model it produced

# %%
if not rows.empty:
    ppl = rows[rows["metric"].str.startswith("ppl/")]
    ppl = ppl.sort_values("timestamp").groupby(["run_id", "metric"], as_index=False).last()
    summary = summary.merge(ppl.pivot(index="run_id", columns="metric", values="value"), how="left",
                            left_on="run_id", right_index=True)
summary = summary.sort_values(["sparsity", "allocator"]).reset_index(drop=True)
summary.drop(columns="run_id").style.format(precision=4).hide(axis="index")

# %% [markdown]
# ## Kept width per layer
# Dotted: the dense width. Global allocation spares some layers (often the first and last) and cuts others
# deeper; uniform allocation gives every layer the same width up to rounding.

# %%
per_layer = pd.DataFrame([
    {"plan": label, "layer": lp.index, "kept attention groups": len(lp.kept_groups) / lp.n_groups,
     "kept MLP neurons": len(lp.kept_neurons) / lp.n_neurons}
    for label, plan in plans.items() for lp in plan.layers])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for ax, col in zip(axes, ["kept attention groups", "kept MLP neurons"]):
    for label, g in per_layer.groupby("plan"):
        ax.plot(g["layer"], g[col], marker=".", label=label, ls="--" if label.startswith("uniform") else "-")
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    ax.set_title(f"{col} (fraction of dense)")
    ax.set_xlabel("layer")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
axes[1].legend(fontsize=7, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Per-layer widths of each plan (fraction kept)

# %%
per_layer.pivot(index="layer", columns="plan", values="kept MLP neurons").style.format("{:.2f}")
