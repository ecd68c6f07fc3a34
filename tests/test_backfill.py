"""Rows carry what they claim (docs/protocol.md, "Result rows"): every committed pruned run's kept_fraction row has
its per-layer widths and the plan's hash, and `experiments.backfill_widths` recomputes them — never the
evaluation — for rows written before, refusing a plan that is not the run's. Tiny models, no built assets."""

import json
from pathlib import Path

import pytest
from fixture_text import PYDOC_FILE
from hydra import compose, initialize_config_dir

from experiments.run import run_experiment
from nirvana.backfill import backfill, needs_backfill
from nirvana.config import typed
from nirvana.results import iter_rows

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_llama", "calibration=pydoc", "calibration.n_samples=4", "calibration.seq_len=32",
        "calibration.probe.n_samples=4", "calibration.probe.seq_len=16", "job.score_cache=null", "job.progress=false",
        "eval=ppl", "eval.perplexity.seq_len=[32]", f"eval.perplexity.datasets=[{PYDOC_FILE}]", "eval.perplexity.max_windows=2"]


def run(tmp_path, name, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = typed(compose(config_name="run", overrides=[*TINY, *overrides, f"job.results_file={tmp_path / 'r.jsonl'}"]))
    return run_experiment(cfg, tmp_path / name)


def strip(path: Path) -> dict:
    """Remove widths and plan hash from every kept_fraction row, as in rows written before they were recorded;
    returns run id → what was removed."""
    removed, lines = {}, []
    for r in iter_rows(path):
        if r["metric"] == "kept_fraction" and "widths" in r["extra"]:
            removed[r["run_id"]] = {k: r["extra"].pop(k) for k in ("widths", "plan_hash")}
            r["extra"].pop("plan")
        lines.append(json.dumps(r, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n")
    return removed


@pytest.fixture(scope="module")
def tiny_rows(tmp_path_factory):
    """A dense run, NIRVANA at 0.4, FLAP at 0.2, and NIRVANA with its draw and γ chosen by KL."""
    tmp = tmp_path_factory.mktemp("rows")
    run(tmp, "d", "pruner=dense")
    run(tmp, "n", "pruner=nirvana", "sparsity=0.4")
    run(tmp, "f", "pruner=flap", "sparsity=0.2")
    run(tmp, "k", "pruner=nirvana", "sparsity=0.3", "calibration.selection=kl", "calibration.candidates=2",
        "gamma=[1.0,3.0]")
    return tmp / "r.jsonl"


def test_backfill_recomputes_the_plan_from_the_recorded_recipe(tiny_rows, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(tiny_rows.read_bytes())
    removed = strip(path)
    before = path.read_text().splitlines()
    assert len(removed) == 3 and len(needs_backfill(list(iter_rows(path)))) == 3  # the dense run needs nothing
    kl = next(r for r in iter_rows(path) if r["calibration_selection"] == "kl")
    assert kl["calibration_seed"] in (12, 13) and kl["gamma"] in (1.0, 3.0)  # the draw and γ it chose
    plain = [r for r in removed if r != kl["run_id"]]
    outcome = backfill(path, TINY[1:], runs=plain, experiment=None)  # the base config with TINY's overrides
    assert set(outcome) == set(plain) and all(v.startswith("backfilled") for v in outcome.values())
    # a run made with overrides of its own is found with them; it is replayed on its chosen draw and γ
    selected = backfill(path, TINY[1:] + ["calibration.selection=kl", "calibration.candidates=2", "gamma=[1.0,3.0]"],
                        experiment=None)
    assert list(selected) == [kl["run_id"]] and selected[kl["run_id"]].startswith("backfilled")
    after = path.read_text().splitlines()
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    assert len(after) == len(before) and len(changed) == 3  # only the three kept_fraction rows
    for r in iter_rows(path):
        if r["run_id"] in removed and r["metric"] == "kept_fraction":
            assert {k: r["extra"][k] for k in ("widths", "plan_hash")} == removed[r["run_id"]]
            assert r["extra"]["widths_backfilled_at"]
    assert not needs_backfill(list(iter_rows(path))) and backfill(path, TINY[1:], experiment=None) == {}


def test_backfill_refuses_a_plan_that_is_not_the_runs(tiny_rows, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(tiny_rows.read_bytes())
    strip(path)
    lines = []
    for r in iter_rows(path):
        if r["pruner"] == "flap" and r["metric"] == "params_after":
            r["value"] += 8  # what the run recorded is not what the recipe gives
        lines.append(json.dumps(r, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    flap = next(r["run_id"] for r in iter_rows(path) if r["pruner"] == "flap")
    outcome = backfill(path, TINY[1:], runs=[flap], experiment=None)
    assert outcome[flap].startswith("refused: the recomputed plan is not the run's — params_after")
    assert path.read_bytes() == before
    unknown = backfill(path, TINY[1:] + ["calibration.n_samples=5"], runs=[flap], experiment=None)
    assert unknown[flap].startswith("refused: no shipped config")  # no candidate config has its run id


COMMITTED = sorted((ROOT / "results" / "rows").glob("*.jsonl")) + [ROOT / "results" / "demo" / "rows.jsonl"]
@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_pruned_row_records_its_widths_and_plan_hash(path):
    missing = needs_backfill(list(iter_rows(path)))
    assert not missing, f"{path.name}: pruned runs without extra.widths / plan_hash: {missing}"
