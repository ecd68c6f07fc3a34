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
# Two sources of rows, either may be absent:
#
# 1. **The recovery sweep** (`conf/experiment/recovery_offline.yaml`): NIRVANA, FLAP and Taylor pruned exactly as
#    in Table 2, then the same LoRA budget (steps, data, rank), then Table 2's protocol. Its rows carry
#    `extra.recovery`; the unrecovered model of each is its Table 2 row. Does one method recover more?
#
#    ```
#    make reproduce-recovery    # = python -m experiments.run -m experiment=recovery_offline, then the report
#    ```
# 2. **Single checkpoints** (`experiments.recover`), each evaluated before and after (`extra.stage`):
#
#    ```
#    python -m experiments.prune model=smollm2_135m sparsity=0.4 save_dir=CKPT
#    python -m experiments.recover model.path=CKPT recovery=lora_offline \
#        "eval.perplexity.datasets=[wiki_passages]" "eval.perplexity.seq_len=[128]" eval.perplexity.max_texts=100
#      # → results/rows/recovery.jsonl     (recovery=lora: the official alpaca-cleaned run, needs the hub)
#    ```
#
# `recovery=lora_offline` trains on a local stand-in ("Continue the text:" + LAMBADA-tail passages), not on
# alpaca-cleaned: its numbers show what the same budget does to each method here, not the paper's recovery (and
# LAMBADA-style text is in-domain for it, so `lambada_head` perplexity gains are flattered). Only rows are read;
# intervals are paired bootstraps over the same items (docs/protocol.md). `NIRVANA_RESULTS` points at another
# results folder with the same layout.

# %% tags=["parameters"]
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from nirvana.paths import REPO_ROOT
from nirvana.reporting import pairing, tables
from nirvana.results import read_rows

RESULTS = Path(os.environ.get("NIRVANA_RESULTS", REPO_ROOT / "results"))
ROWS_FILE = RESULTS / "rows" / "recovery.jsonl"
COMMAND = "make reproduce-recovery` or `python -m experiments.recover model.path=CKPT recovery=lora_offline"
SEQ_LEN = 512  # the perplexity the sweep's comparison uses (Table 2 measures 128 and 512)


def read_all(pattern: str) -> pd.DataFrame:
    return read_rows(sorted((RESULTS / "rows").glob(pattern)))


# %%
sweep = read_all("recovery_*.jsonl")
single = read_rows(ROWS_FILE)
if sweep.empty and single.empty:
    raise FileNotFoundError(f"no result rows in {RESULTS / 'rows'}/recovery*.jsonl: produce them with `{COMMAND}`")
table2 = read_all("table2_*.jsonl")
models = sorted(sweep["model"].unique())  # read_rows keeps its columns when nothing was read
unrecovered = table2[table2["model"].isin(models)]
print(f"recovery sweep: {sweep['run_id'].nunique()} runs, models {models}; "
      f"single checkpoints: {single['run_id'].nunique()} runs")

# %% [markdown]
# ## The same budget for every method (the recovery sweep)
# Per model: what recovery did to each method (zero-shot mean after − before, perplexity after ÷ before) and
# whether it did more than for NIRVANA given the same budget (difference of the gains; for perplexity the ratio
# of the ratios). `*`: the 95 % interval excludes no difference.

# %%
both = pd.concat([sweep, unrecovered], ignore_index=True)
for model in models:
    gains = tables.stage_gains(both, model, pairing.REFERENCE, seq_len=SEQ_LEN)
    print(model)
    display(gains.style.hide(axis="index") if not gains.empty else "no recovered model with its Table 2 row")

# %% [markdown]
# ## Plot: each method before → after recovery, with 95 % intervals
# Left: the zero-shot mean; right: wiki-passage perplexity at 512 tokens (log scale). A line joins a model's
# unrecovered and recovered values.

# %%
fig, (acc_ax, ppl_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
colours = {}  # one colour per line label in both panels, whichever pairs a panel lacks
for model in models:
    long = pairing.long_table(both, model, pairing.BASE_REFERENCE)
    methods = long["method"].unique()
    pairs = [(pairing.reference_of(m, methods, pairing.BASE_REFERENCE), m) for m in methods]
    pairs = [(b, m) for b, m in pairs if b and b != m]
    for ax, column in ((acc_ax, pairing.AVG_COLUMN), (ppl_ax, f"wiki_passages@{SEQ_LEN}")):
        cells = long[long["column"] == column].set_index(["method", "sparsity"])
        for b, m in pairs:
            for s in sorted(set(long.loc[long["method"] == m, "sparsity"])):
                if (b, s) not in cells.index or (m, s) not in cells.index:
                    continue
                ends = cells.loc[[(b, s), (m, s)]]
                y = ends["value"].to_numpy()
                # a percentile bootstrap interval need not contain the point estimate: clip, never a negative bar
                err = [(y - ends["lo"].to_numpy()).clip(0), (ends["hi"].to_numpy() - y).clip(0)]
                label = f"{b} s={s:g} ({model})"
                colour = colours.setdefault(label, f"C{len(colours) % 10}")
                ax.errorbar([0, 1], y, yerr=err, marker="o", capsize=3, color=colour, label=label)
        ax.set_xticks([0, 1], ["pruned", "pruned + LoRA"])
        ax.grid(alpha=0.3)
acc_ax.set_ylabel("zero-shot mean accuracy")
ppl_ax.set_ylabel(f"wiki_passages perplexity @{SEQ_LEN}")
ppl_ax.set_yscale("log")
acc_ax.set_title("zero-shot")
ppl_ax.set_title("perplexity")
if models:
    acc_ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Single checkpoints: each metric before and after recovery

# %%
if single.empty:
    print(f"no single-checkpoint rows in {ROWS_FILE}")
    table = pd.DataFrame()
else:
    single = single.assign(stage=[(e or {}).get("stage") for e in single["extra"]])
    info = {r["run_id"]: (r["extra"] or {}) for _, r in single[single["task"] == "recovery"].iterrows()}
    single = single.assign(data=[info.get(i, {}).get("data_source") for i in single["run_id"]],
                           steps=[info.get(i, {}).get("steps") for i in single["run_id"]])
    evals = single[single["stage"].isin(["before", "after"])]
    evals = evals.sort_values("timestamp").groupby(["run_id", "metric", "stage"], as_index=False).last()
    evals = evals.assign(limit=evals["limit"].fillna("none (full)"), data=evals["data"].fillna("?"),
                         steps=evals["steps"].fillna(-1).astype(int))
    keys = ["model", "pruner", "sparsity", "data", "steps", "metric", "limit"]
    table = evals.pivot_table(index=keys, columns="stage", values="value").reset_index()
    table = table.dropna(subset=["before", "after"])
    table["change"] = table["after"] / table["before"] - 1
    display(table[keys + ["before", "after", "change"]].style.format(
        {"before": "{:.4g}", "after": "{:.4g}", "change": "{:+.1%}", "sparsity": "{:g}"}).hide(axis="index"))

# %% [markdown]
# ## Plot: single checkpoints' perplexity before/after (left) and every run's training curve (right)

# %%
fig, (bars, curve) = plt.subplots(1, 2, figsize=(11, 3.8))
ppl = table[table["metric"].str.startswith("ppl/")].reset_index(drop=True) if not table.empty else table
labels = [f"{r.pruner} s={r.sparsity:g}\n{r.metric.removeprefix('ppl/')}" for r in ppl.itertuples()]
x = range(len(ppl))
if len(ppl):
    bars.bar([i - 0.2 for i in x], ppl["before"], width=0.4, label="pruned")
    bars.bar([i + 0.2 for i in x], ppl["after"], width=0.4, label="pruned + LoRA")
    bars.legend()
else:
    bars.text(0.5, 0.5, "no single-checkpoint rows", ha="center", va="center", transform=bars.transAxes)
bars.set_xticks(list(x), labels, fontsize=8)
bars.set_ylabel("perplexity")
bars.set_title("single checkpoints: perplexity before / after")
bars.grid(alpha=0.3, axis="y")
train = pd.concat([r[r["task"] == "recovery"] for r in (sweep, single) if not r.empty], ignore_index=True)
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
curve.legend(fontsize=7)
plt.tight_layout()
plt.show()
