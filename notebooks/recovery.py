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
# # Recovery fine-tuning: before and after LoRA
#
# Each recovery run evaluates the pruned checkpoint, fine-tunes LoRA adapters (r=8, α=16 on
# q/k/v/o/gate/up/down; docs/protocol.md), merges them, and evaluates again with the same protocol. Rows carry
# `extra.stage` = before / after, plus the training curve (task `recovery`).
#
# **Rows** come from `experiments.recover` (one run per pruned checkpoint):
#
# ```
# python -m experiments.prune model=smollm2_135m sparsity=0.4 save_dir=CKPT
# python -m experiments.recover model.path=CKPT recovery=lora_offline \
#     "eval.perplexity.datasets=[wiki_passages]" "eval.perplexity.seq_len=[128]" eval.perplexity.max_texts=100
#   # → results/rows/recovery.jsonl     (recovery=lora: the official alpaca-cleaned run, needs the hub)
# ```
#
# `recovery=lora_offline` trains on a local stand-in ("Continue the text:" + LAMBADA-tail passages), not on
# alpaca-cleaned: its numbers show the pipeline works, not the paper's recovery. The `data` column says which.
# `NIRVANA_RESULTS` points at another results folder with the same layout.

# %% tags=["parameters"]
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from nirvana.paths import REPO_ROOT
from nirvana.results import read_rows

RESULTS = Path(os.environ.get("NIRVANA_RESULTS", REPO_ROOT / "results"))
ROWS_FILE = RESULTS / "rows" / "recovery.jsonl"
COMMAND = "python -m experiments.recover model.path=CKPT recovery=lora_offline"

# %%
rows = read_rows(ROWS_FILE)
if rows.empty:
    raise FileNotFoundError(f"no result rows in {ROWS_FILE}: produce them with `{COMMAND}`")
rows = rows.assign(stage=[(e or {}).get("stage") for e in rows["extra"]])
train = rows[rows["task"] == "recovery"]
info = {r["run_id"]: (r["extra"] or {}) for _, r in train.iterrows()}
rows = rows.assign(data=[info.get(i, {}).get("data_source") for i in rows["run_id"]],
                   steps=[info.get(i, {}).get("steps") for i in rows["run_id"]])
print(f"{rows['run_id'].nunique()} recovery runs in {ROWS_FILE}")

# %% [markdown]
# ## Table: each metric before and after recovery

# %%
evals = rows[rows["stage"].isin(["before", "after"])]
evals = evals.sort_values("timestamp").groupby(["run_id", "metric", "stage"], as_index=False).last()
evals = evals.assign(limit=evals["limit"].fillna("none (full)"), data=evals["data"].fillna("?"),
                     steps=evals["steps"].fillna(-1).astype(int))
keys = ["model", "pruner", "sparsity", "data", "steps", "metric", "limit"]
table = evals.pivot_table(index=keys, columns="stage", values="value").reset_index()
table = table.dropna(subset=["before", "after"])
table["change"] = table["after"] / table["before"] - 1
table[keys + ["before", "after", "change"]].style.format(
    {"before": "{:.4g}", "after": "{:.4g}", "change": "{:+.1%}", "sparsity": "{:g}"}).hide(axis="index")

# %% [markdown]
# ## Plot: before/after bars (left) and the training curve (right)

# %%
fig, (bars, curve) = plt.subplots(1, 2, figsize=(11, 3.8))
ppl = table[table["metric"].str.startswith("ppl/")].reset_index(drop=True)
labels = [f"{r.pruner} s={r.sparsity:g}\n{r.metric.removeprefix('ppl/')}" for r in ppl.itertuples()]
x = range(len(ppl))
bars.bar([i - 0.2 for i in x], ppl["before"], width=0.4, label="pruned")
bars.bar([i + 0.2 for i in x], ppl["after"], width=0.4, label="pruned + LoRA")
bars.set_xticks(list(x), labels, fontsize=8)
bars.set_ylabel("perplexity")
bars.set_title("perplexity before / after recovery")
bars.legend()
bars.grid(alpha=0.3, axis="y")
for _, r in train[train["metric"] == "train_loss"].iterrows():
    hist = pd.DataFrame(r["extra"].get("history") or [], columns=["step", "loss", "lr"])
    if hist.empty:
        continue
    smooth = hist["loss"].rolling(max(1, len(hist) // 20), min_periods=1).mean()
    line, = curve.plot(hist["step"], smooth, label=f"{r['pruner']} s={r['sparsity']:g} train")
    val = train[(train["run_id"] == r["run_id"]) & (train["metric"] == "val_loss")]
    if not val.empty:
        vh = pd.DataFrame(val.iloc[-1]["extra"].get("val_history") or [], columns=["step", "loss"])
        curve.plot(vh["step"], vh["loss"], "o--", color=line.get_color(), label="validation")
curve.set_xlabel("optimizer step")
curve.set_ylabel("loss (response tokens)")
curve.set_title("LoRA training")
curve.grid(alpha=0.3)
curve.legend(fontsize=8)
plt.tight_layout()
plt.show()
