"""Evidence that holds (docs/protocol.md): disjoint data enforced before any model is loaded, one fixed KL probe
per source, achieved sparsity from the plan, equal-size comparisons, every shipped experiment disjoint."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixture_text import PYDOC_FILE
from hydra import compose, initialize_config_dir

from experiments.run import run_experiment
from nirvana.config import typed
from nirvana.evaluation.protocol import check_disjoint
from nirvana.pruners import compute_plan
from nirvana.results import read_rows
from nirvana.texts import OFFLINE_SETS, Span
from nirvana.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
TINY = ["model=tiny_llama", "calibration=pydoc", "calibration.n_samples=4", "calibration.seq_len=32",
        "calibration.probe.n_samples=4", "calibration.probe.seq_len=16", "job.score_cache=null", "job.progress=false",
        "eval=ppl", "eval.perplexity.seq_len=[32]", f"eval.perplexity.datasets=[{PYDOC_FILE}]",
        "eval.perplexity.max_windows=4"]


def cfg(*overrides, hydra=False):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        c = compose(config_name="run", overrides=list(overrides), return_hydra_config=hydra)
        return c if hydra else typed(c)


def test_spans_overlap_only_where_items_are_shared():
    a, b = Span("s", 0, 10), Span("s", 10, 20)
    assert not a.overlaps(b) and not b.overlaps(a) and a.overlaps(Span("s", 9, 12)) and not a.overlaps(Span("t"))
    assert not Span("s", 0, -5).overlaps(Span("s", -5, None))  # a source minus its tail, and that tail
    assert Span("s", 0, 100).overlaps(Span("s", -5, None))  # lengths unknown: not provably disjoint
    offline = list(OFFLINE_SETS.values())
    assert not any(x.span.overlaps(y.span) for x in offline for y in offline if x is not y)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_shipped_experiment_keeps_calibration_and_probe_off_evaluated_items(name):
    c = cfg(f"experiment={name}")
    record = check_disjoint(c.calibration, c.eval)  # raises on any overlap
    assert record["calibration_and_probe"] and record["evaluated"]


@pytest.mark.slow  # the offline calibration sets and task data (make assets)
def test_calibrating_on_evaluated_items_fails_before_the_model_loads(tmp_path, monkeypatch):
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_from_config", lambda *a, **k: pytest.fail("model loaded"))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"calibration: wiki_tail = boolq/validation\[2570:3270\] overlaps "
                                         r"eval.zeroshot.tasks: boolq = boolq/validation\[0:3270\]"):
        run_experiment(cfg("model=tiny_llama", "calibration=wiki_tail", "eval=zeroshot", "eval.zeroshot.tasks=[boolq]",
                           f"job.results_file={tmp_path / 'r.jsonl'}"), tmp_path)
    with pytest.raises(ValueError, match="KL probe of lambada_tail = lambada_openai/test.2653:3153. overlaps"):
        run_experiment(cfg("model=tiny_llama", "eval=ppl", "eval.perplexity.datasets=[lambada]",
                           f"job.results_file={tmp_path / 'r.jsonl'}"), tmp_path)
    assert time.perf_counter() - t0 < 30


def test_allow_overlap_runs_and_every_row_says_so(tmp_path):
    text = tmp_path / "t.jsonl"
    text.write_text("".join(f'{{"text": "{" ".join(["word"] * 60)} {i}"}}\n' for i in range(40)))
    c = cfg(*TINY, "calibration=text_file", f"calibration.path={text}", "calibration.probe.documents=5",
            f"eval.perplexity.datasets=[{text}]", f"job.results_file={tmp_path / 'r.jsonl'}")
    with pytest.raises(ValueError, match="overlaps"):
        run_experiment(c, tmp_path / "a")
    rows = run_experiment(cfg(*TINY, "calibration=text_file", f"calibration.path={text}", "calibration.probe.documents=5",
                              f"eval.perplexity.datasets=[{text}]", f"job.results_file={tmp_path / 'r.jsonl'}",
                              "allow_overlap=true"), tmp_path / "b")
    assert rows and all(r["extra"]["overlaps_allowed"] for r in rows)


def test_one_fixed_probe_across_pruners_and_a_candidates_kl_is_the_runs(tmp_path):
    f = tmp_path / "r.jsonl"
    a = run_experiment(cfg(*TINY, "pruner=nirvana", "calibration.selection=kl", "calibration.candidates=2",
                           f"job.results_file={f}"), tmp_path / "a")
    b = run_experiment(cfg(*TINY, "pruner=flap", f"job.results_file={f}"), tmp_path / "b")
    probe_a = next(r for r in a if r["metric"] == "kl/probe")
    probe_b = next(r for r in b if r["metric"] == "kl/probe")
    assert probe_a["extra"]["probe"]["sha256"] == probe_b["extra"]["probe"]["sha256"]
    assert probe_a["extra"]["probe"]["span"] == "pydoc[-10:]"
    chosen = next(r for r in a if r["metric"] == "kl/candidate" and r["extra"]["chosen"])
    assert chosen["value"] == probe_a["value"]  # the same plan on the same probe: the same number
    iou = {r["metric"]: r for r in a if r["metric"].startswith("plan_iou/")}
    assert set(iou) == {"plan_iou/attention", "plan_iou/mlp"}  # plan stability across the 2 draws
    assert all(0 < r["value"] <= 1 and r["n"] == 2 and r["extra"]["pairs"] == 1 for r in iou.values())
    assert not any(r["metric"].startswith("plan_iou/") for r in b)  # one calibration draw: nothing to compare


def test_achieved_sparsity_is_recorded_and_matched_mode_reaches_the_request(calib_ids):
    model = tiny_model("llama", num_attention_heads=6, num_key_value_heads=3, hidden_size=48)  # 3 groups per layer
    literal = compute_plan(model, calib_ids, "wanda_sp", sparsity=0.2)
    matched = compute_plan(model, calib_ids, "wanda_sp", sparsity=0.2, ratio="matched")
    taylor = compute_plan(model, calib_ids, "taylor", sparsity=0.2, allocator="uniform", layer_start=0,
                          layer_end=None, round_to=1)
    assert literal.pruned_groups == 0 and literal.achieved_sparsity < 0.19  # int(0.2 × 3) = 0: less than asked
    for plan in (matched, taylor):  # the MLP takes what the attention floor left: the request, within a neuron
        assert plan.pruned_groups == 0 and plan.achieved_sparsity == pytest.approx(0.2, abs=0.01)


def test_a_sweep_evaluates_the_dense_model_once_even_when_forced(tmp_path):
    rows_file = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "experiments.run", "-m", *TINY, "pruner=dense,magnitude", "sparsity=0.2,0.4",
           f"job.results_file={rows_file}", "job.force=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    df = read_rows(rows_file)
    dense = df[df["pruner"] == "dense"]
    assert dense["run_id"].nunique() == 1 and len(dense) == 3  # one batch (2 pruning rows + ppl): computed once
    assert out.stdout.count("already complete") == 1
    assert set(df[df["pruner"] == "magnitude"]["sparsity"]) == {0.2, 0.4}
    assert torch.tensor(df[df["metric"] == "kept_fraction"]["value"].tolist()).le(1).all()
