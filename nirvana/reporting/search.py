"""What a searched allocation did and cost, from its rows (nirvana.evaluation.protocol.search_rows): one line per
searched run — the probe KL of its start and of its best, the held-out perplexity of both, how many candidates and
plan batches it rated, how many probe tokens and seconds it spent — and the per-generation trace of the probe KL
beside the held-out perplexity, so a reader sees whether the search over-fits the probe (the KL falls while the
held-out perplexity does not). Writes search_cost.md and search_trace.png.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..results import latest
from . import figures
from .tables import markdown


def searched_runs(rows: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """The newest `kl/best` row of every searched (model, method, sparsity, calibration seed), with its cost row's
    numbers joined: candidates rated, plan batches, probe tokens, seconds."""
    df = rows[rows["task"] == "search"]
    if model is not None:
        df = df[df["model"] == model]
    keys = ["model", "pruner", "sparsity", "calibration_seed"]
    best = latest(df[df["metric"] == "kl/best"], keys)
    cost = latest(df[df["metric"] == "search_seconds"], keys).set_index(keys)
    out = []
    for _, r in best.iterrows():
        trace = r["extra"]["trace"]
        key = tuple(r[k] for k in keys)
        c = cost.loc[key] if key in cost.index else None
        heldout = [e["heldout"]["ppl"] for e in trace if "heldout" in e]
        out.append({
            "method": r["pruner"], "sparsity": r["sparsity"], "seed": r["calibration_seed"],
            "generations": len(trace) - 1, "accepted": sum(bool(e["accepted"]) for e in trace[1:]),
            "KL start": trace[0]["kl"], "KL best": r["value"], "KL best ÷ start": r["value"] / trace[0]["kl"],
            "held-out set": (r["extra"].get("heldout") or {}).get("set", ""),
            "held-out ppl start": heldout[0] if heldout else math.nan,
            "held-out ppl best": heldout[-1] if heldout else math.nan,
            "candidates": None if c is None else int(c["extra"]["rated"]),
            "plan batches": None if c is None else int(c["extra"]["plan_batches"]),
            "probe tokens": None if c is None else int(c["extra"]["tokens"]),
            "seconds": None if c is None else float(c["value"]),
            "trace": trace,
        })
    return pd.DataFrame(out)


def write_search_report(rows: pd.DataFrame, out: str | Path, model: str | None = None,
                        command: str | None = None) -> list[Path]:
    """search_cost.md and search_trace.png under `out`; nothing when the rows hold no searched run."""
    runs = searched_runs(rows, model)
    if runs.empty:
        return []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = runs.drop(columns=["trace"]).sort_values(["method", "sparsity", "seed"])
    head = ("What each searched allocation did and cost (probe KL = its fitness, on the probe windows it selects "
            "on; held-out perplexity = the first windows of an evaluation set, never used for selection). "
            "The KL can only fall (elitism); a held-out perplexity that rises while it falls is over-fitting.\n\n")
    if command:
        head = f"Produced by `{command}`.\n\n" + head
    path = out / "search_cost.md"
    path.write_text(head + markdown(table, floatfmt=".4g") + "\n")
    return [path, figures.search_trace(runs, out / "search_trace.png")]
