"""Result rows for report tests: two methods at two sparsities plus dense, with per-item results chosen so that
every interval and paired difference can be checked by hand."""

import numpy as np

from nirvana.results import make_row

RUN = {"model": "m", "checkpoint": "c", "calibration_source": "x", "calibration_seed": 0,
       "calibration_selection": "none", "dtype": "float32", "device": "cpu"}
N = 200  # items per task
ACHIEVED = {("nirvana", 0.2): 0.196, ("flap", 0.2): 0.199, ("nirvana", 0.4): 0.396, ("flap", 0.4): 0.35}


def items(p: float, seed: int) -> list[float]:
    """N items of which exactly round(p·N) are correct, in a seeded order."""
    x = np.zeros(N)
    x[: round(p * N)] = 1
    return np.random.default_rng(seed).permutation(x).tolist()


def fixture_rows() -> list[dict]:
    rows = []
    for pruner, s, gamma, base in [("dense", 0.0, None, 0.6), ("nirvana", 0.2, 3.36, 0.55), ("flap", 0.2, None, 0.5),
                                   ("nirvana", 0.4, 3.36, 0.45), ("flap", 0.4, None, 0.4)]:
        r = {**RUN, "run_id": f"{pruner}{s}", "pruner": pruner, "sparsity": s, "gamma": gamma}
        arc, piqa = items(base, 1), items(base + 0.1, 2)  # the same seeds: methods differ on the same items
        nll = (np.log(10 / base) * 31 + np.linspace(-3, 3, 16)).tolist()  # 16 windows of 31 predicted tokens
        rows += [make_row(r, "arc_easy", "acc", float(np.mean(arc)), 0.03, n=N, extra={"items": arc}),
                 make_row(r, "arc_easy", "acc_norm", 0.0),
                 make_row(r, "piqa", "acc", float(np.mean(piqa)), 0.03, n=N, extra={"items": piqa}),
                 make_row(r, "average", "mean_task_metric", base + 0.05, n=2),
                 make_row(r, "wiki_passages", "ppl/wiki_passages@128", float(np.exp(np.mean(nll) / 31)), seq_len=128,
                          extra={"window_nll": nll, "window_tokens": 31})]
        kept = 1.0 if pruner == "dense" else 1 - ACHIEVED[(pruner, s)] * 0.8
        rows.append(make_row(r, "pruning", "kept_fraction", kept))
        rows.append(make_row(r, "pruning", "achieved_sparsity", 0.0 if pruner == "dense" else ACHIEVED[(pruner, s)]))
        if pruner != "dense":
            rows.append(make_row(r, "calibration", "kl/probe", 1 - base, extra={"probe": {"sha256": "p1"}}))
    return rows


# --- calibration draws (tests/test_draws.py) ----------------------------------------------------------------
TASKS3 = ("arc_easy", "piqa", "sciq")  # the zero-shot mean of these fixtures: three tasks, N items each


def shifted(x: list[float], k: int) -> list[float]:
    """x with k more correct items (k < 0: |k| fewer), the first ones in order: a known paired difference."""
    x = list(x)
    target, to = (0.0, 1.0) if k > 0 else (1.0, 0.0)
    for i in [i for i, v in enumerate(x) if v == target][:abs(k)]:
        x[i] = to
    return x


def draw_rows(spec: dict, dense: dict | None = None, limit: int = 500) -> list[dict]:
    """Rows of methods over calibration draws. spec: {(pruner, sparsity, seed, selection): {"shift": {task: k},
    "nll": float}} — each task's items are the shared base items (arc_easy 50 %, piqa 60 %, sciq 70 % correct)
    with k items more correct; 16 windows of 31 tokens at mean NLL/token `nll` (the same window shape for all).
    `dense`: the dense model's {task: accuracy} (default 0.6, 0.7, 0.8)."""
    base = {t: items(p, i + 1) for i, (t, p) in enumerate(zip(TASKS3, (0.5, 0.6, 0.7)))}
    shape = np.linspace(-3, 3, 16)
    rows = []
    dense = dense or {"arc_easy": 0.6, "piqa": 0.7, "sciq": 0.8}
    runs = {("dense", 0.0, None, "none"): {"dense": dense, "nll": 2.0}, **spec}
    for (pruner, s, seed, selection), how in runs.items():
        r = {**RUN, "run_id": f"{pruner}{s}-{seed}-{selection}", "pruner": pruner, "sparsity": s,
             "gamma": 3.36 if pruner.startswith("nirvana") else None, "calibration_seed": seed,
             "calibration_selection": selection if seed is not None else None}
        for t in TASKS3:
            x = items(how["dense"][t], TASKS3.index(t) + 1) if "dense" in how else \
                shifted(base[t], how.get("shift", {}).get(t, 0))
            rows.append(make_row(r, t, "acc", float(np.mean(x)), n=N, limit=limit, extra={"items": x}))
        nll = (how["nll"] * 31 + shape).tolist()
        rows.append(make_row(r, "wiki_passages", "ppl/wiki_passages@512", float(np.exp(how["nll"])), seq_len=512,
                             extra={"window_nll": nll, "window_tokens": 31}))
        rows.append(make_row(r, "pruning", "kept_fraction", 1 - s * 0.8))
        rows.append(make_row(r, "pruning", "achieved_sparsity", s))
    return rows
