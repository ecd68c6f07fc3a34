"""Every analysis notebook executes headless (nbclient) on small fixture rows and plans, with a figure and a
table; the committed .ipynb files match their percent-format .py sources."""

import math
import random
from pathlib import Path

import pytest

from nirvana.reporting import notebooks as nbs
from nirvana.results import append_rows, make_row
from nirvana.surgery.plan import LayerPlan, PruningPlan

NAMES = ["allocation", "beyond", "calibration_ablation", "gamma_ablation", "method_comparison", "recovery"]
BASE = {"model": "tiny", "checkpoint": "ckpt", "calibration_source": "lambada_tail", "calibration_seed": 0,
        "calibration_selection": "none", "dtype": "float32", "device": "cpu"}
PPL = "ppl/wiki_passages@128"


def run(run_id, **fields):
    return {**BASE, "run_id": run_id, **fields}


def gamma_rows():
    rows = []
    for s in (0.2, 0.4):
        for g in (1.0, 3.36, 5.0):
            r = run(f"g{g}s{s}", pruner="nirvana", sparsity=s, gamma=g)
            rows += [make_row(r, "wiki_passages", PPL, 30 + 100 * s + abs(g - 3) * 5, seq_len=128, limit="max_texts=10"),
                     make_row(r, "pruning", "kept_fraction", 1 - s),
                     make_row(r, "calibration", "kl/probe", s + abs(g - 3) / 10)]
    return rows


def calibration_rows():
    rng, rows = random.Random(0), []
    for src in ("lambada_tail", "wiki_passages"):
        for seed in range(4):
            for sel in ("none", "kl"):
                r = run(f"{src}{seed}{sel}", pruner="nirvana", sparsity=0.2, gamma=3.36, calibration_source=src,
                        calibration_seed=seed, calibration_selection=sel)
                kl = rng.uniform(0.1, 0.5)
                rows += [make_row(r, "calibration", "kl/probe", kl),
                         make_row(r, "wiki_passages", PPL, 40 + 50 * kl + rng.uniform(0, 3), seq_len=128)]
                if sel == "kl":
                    rows += [make_row(r, "calibration", "kl/candidate", kl + k / 10,
                                      extra={"label": f"{src}/seed={seed + k}", "chosen": k == 0}) for k in range(2)]
    return rows


def method_rows():
    rows = []
    for pruner, s, gamma, acc in [("dense", 0.0, None, 0.6), ("nirvana", 0.2, 3.36, 0.55), ("flap", 0.2, None, 0.5),
                                  ("nirvana", 0.4, 3.36, 0.45), ("flap", 0.4, None, 0.4)]:
        r = run(f"{pruner}{s}", pruner=pruner, sparsity=s, gamma=gamma)
        rows += [make_row(r, "arc_easy", "acc", acc, stderr=0.05, limit=10),
                 make_row(r, "piqa", "acc", acc + 0.1, stderr=0.05, limit=10),
                 make_row(r, "average", "mean_task_metric", acc + 0.05, limit=10),
                 make_row(r, "wiki_passages", PPL, 12 / acc, seq_len=128),
                 make_row(r, "pruning", "kept_fraction", 1 - 0.8 * s), make_row(r, "pruning", "achieved_sparsity", s)]
    return rows


def allocation_fixture(root: Path) -> str:
    """Plans of a global and a uniform allocation, each in a run folder with its rows.jsonl."""
    rows = []
    for job, allocator in enumerate(("global", "uniform")):
        widths = [56, 40, 24, 40] if allocator == "global" else [40] * 4
        groups = [[0, 1], [1], [0], [0, 1]] if allocator == "global" else [[0, 1]] * 4
        plan = PruningPlan("tiny", "nirvana", 0.4, 3.36, 1000, 640,
                           [LayerPlan(i, g, list(range(w)), 2, 64) for i, (g, w) in enumerate(zip(groups, widths))],
                           allocator=allocator)
        folder = root / "outputs" / "ablation_allocation" / "t0" / str(job)
        folder.mkdir(parents=True)
        plan.save(folder)  # a folder → pruning_plan.json inside
        r = run(f"alloc{allocator}", pruner="nirvana", sparsity=0.4, gamma=3.36)
        job_rows = [make_row(r, "wiki_passages", PPL, 50 if allocator == "global" else 70, seq_len=128)]
        append_rows(folder / "rows.jsonl", job_rows)
        rows += job_rows
    append_rows(root / "results" / "rows" / "ablation_allocation.jsonl", rows)
    return str(root / "outputs" / "ablation_allocation" / "*" / "*" / "pruning_plan.json")


def beyond_rows():
    """The beyond sweep's NIRVANA auto (γ and draw candidates) and FLAP with KL calibration; Table 2's official."""
    rows, table2 = [], []
    for s in (0.2, 0.4):
        r = run(f"auto{s}", pruner="nirvana:auto", sparsity=s, gamma=2.0, calibration_selection="kl")
        rows += [make_row(r, "calibration", "kl/gamma_candidate", s + abs(g - 2) / 10,
                          extra={"gamma": g, "chosen": g == 2.0}) for g in (1.0, 2.0, 3.36)]
        rows += [make_row(r, "calibration", "kl/candidate", s + k / 10, extra={"label": f"seed={k}", "chosen": k == 0})
                 for k in range(3)]
        f = run(f"flapkl{s}", pruner="flap:kl", sparsity=s, calibration_selection="kl")
        rows += [make_row(f, "calibration", "kl/candidate", s + k / 20, extra={"label": f"seed={k}", "chosen": k == 1})
                 for k in range(3)]
        for x, ppl, kl in ((r, 40 + 50 * s, s), (f, 38 + 60 * s, s + 0.05)):
            rows += [make_row(x, "wiki_passages", PPL, ppl, seq_len=128), make_row(x, "calibration", "kl/probe", kl),
                     make_row(x, "average", "mean_task_metric", 0.5 - s / 4), make_row(x, "pruning", "kept_fraction", 1 - s)]
            rows += [make_row(x, "calibration", f"plan_iou/{kind}", 0.9 - s, n=3, extra={"min": 0.8 - s, "pairs": 3})
                     for kind in ("attention", "mlp")]
        for pruner, gamma in (("nirvana", 3.36), ("flap", None)):
            o = run(f"{pruner}{s}", pruner=pruner, sparsity=s, gamma=gamma)
            table2 += [make_row(o, "wiki_passages", PPL, 45 + 70 * s, seq_len=128),
                       make_row(o, "calibration", "kl/probe", s + 0.1), make_row(o, "pruning", "kept_fraction", 1 - s),
                       *evaluated(o, accuracy=0.5 - s / 4, nll=4.0 + s)]
    return rows, table2


def evaluated(r, accuracy, nll, extra=None):
    """Table 2's zero-shot mean and 512-token perplexity of run `r`, with per-item and per-window evidence."""
    rng, extra = random.Random(f"{r['run_id']}{accuracy}"), extra or {}
    items = [float(rng.random() < accuracy) for _ in range(40)]
    windows = [nll + rng.uniform(-0.3, 0.3) for _ in range(8)]
    return [make_row(r, "arc_easy", "acc", sum(items) / len(items), limit=40, extra=extra | {"items": items}),
            make_row(r, "average", "mean_task_metric", sum(items) / len(items), limit=40, extra=extra),
            make_row(r, "wiki_passages", "ppl/wiki_passages@512", math.exp(sum(windows) / 8), seq_len=512,
                     extra=extra | {"window_nll": windows, "window_tokens": 511})]


def recovery_sweep_rows():
    """The recovery sweep: NIRVANA and FLAP at 0.4 (their unrecovered rows are beyond_rows' Table 2 rows)."""
    rows, extra = [], {"recovery": "lora_offline"}
    for pruner, gamma, gain in (("nirvana", 3.36, 0.1), ("flap", None, 0.05)):
        r = run(f"{pruner}0.4lora", pruner=pruner, sparsity=0.4, gamma=gamma)
        rows += [make_row(r, "pruning", "kept_fraction", 0.6, extra=extra),
                 *evaluated(r, accuracy=0.4 + gain, nll=4.4 - 4 * gain, extra=extra),
                 make_row(r, "recovery", "train_loss", 3.1, n=6,
                          extra=extra | {"history": [[i, 4 - i / 6, 1e-4] for i in range(1, 7)], "first_loss": 4.0})]
    return rows


def recovery_rows():
    r = run("rec1", pruner="nirvana", sparsity=0.4, gamma=3.36)
    extra = {"recovery": "lora_offline", "data_source": "local", "steps": 6}
    return [make_row(r, "wiki_passages", PPL, 90.0, seq_len=128, limit="max_texts=100", extra={"stage": "before"}),
            make_row(r | {"checkpoint": "ckpt_rec"}, "wiki_passages", PPL, 60.0, seq_len=128, limit="max_texts=100",
                     extra={"stage": "after"}),
            make_row(r, "recovery", "train_loss", 3.1, n=6,
                     extra=extra | {"history": [[i, 4 - i / 6, 1e-4] for i in range(1, 7)], "first_loss": 4.0}),
            make_row(r, "recovery", "val_loss", 3.2, n=4, extra=extra | {"val_history": [[3, 3.5], [6, 3.2]],
                                                                          "best_step": 6})]


@pytest.fixture(scope="module")
def fixture_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb")
    results = root / "results"
    append_rows(results / "rows" / "ablation_gamma.jsonl", gamma_rows())
    append_rows(results / "rows" / "ablation_calibration.jsonl", calibration_rows())
    append_rows(results / "demo" / "rows.jsonl", method_rows())
    append_rows(results / "rows" / "recovery.jsonl", recovery_rows())
    beyond, table2 = beyond_rows()
    append_rows(results / "rows" / "beyond_tiny.jsonl", beyond)
    append_rows(results / "rows" / "table2_tiny.jsonl", table2)
    append_rows(results / "rows" / "recovery_tiny.jsonl", recovery_sweep_rows())
    plans = allocation_fixture(root)
    return root, results, plans


def test_the_notebooks_are_the_ones_we_test():
    assert [p.stem for p in nbs.notebook_sources()] == NAMES


def test_committed_ipynb_match_their_py_sources():
    assert nbs.out_of_sync(nbs.notebook_sources()) == []


def test_every_notebook_executes_on_fixture_rows(fixture_results):
    root, results, plans = fixture_results
    outcomes = nbs.execute_all(str(results), plans, root / "executed", jobs=2, timeout=120)
    failures = {o.name: o.message for o in outcomes if o.status != "ok"}
    assert not failures, failures
    import nbformat

    for o in outcomes:
        nb = nbformat.read(o.output, as_version=4)
        outputs = [out for c in nb.cells if c.cell_type == "code" for out in c.get("outputs", [])]
        assert not [x for x in outputs if x.output_type == "error"], o.name
        kinds = {k for x in outputs for k in x.get("data", {})}
        assert "image/png" in kinds, f"{o.name} shows no figure"
        assert "text/html" in kinds, f"{o.name} shows no table"
        text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert "python -m experiments." in text or "make " in text, f"{o.name} does not state its command"


def test_a_notebook_without_rows_is_skipped_with_its_command(tmp_path):
    [outcome] = nbs.execute_all(str(tmp_path / "empty"), None, None, only=["recovery"], timeout=60)
    assert outcome.status == "skipped" and "python -m experiments.recover" in outcome.message
    assert "make reproduce-recovery" in outcome.message
