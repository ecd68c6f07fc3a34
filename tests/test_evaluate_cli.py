"""The evaluate entry point on tiny models: composed from the real configs, shrunk."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import experiments.evaluate as ev
from nirvana.config import typed
from nirvana.evaluation.protocol import run_identity
from nirvana.pruners import prune
from nirvana.results import ROW_FIELDS, read_rows
from nirvana.surgery.checkpoint import save_pruned
from nirvana.tiny import pydoc_text, tiny_model

CONF = str(Path(__file__).resolve().parents[1] / "conf")
SMALL_SPEED = ["eval.speed.prompt_len=16", "eval.speed.new_tokens=4", "eval.speed.repeats=2"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("text") / "pydoc.txt"
    f.write_text(pydoc_text()[:40000])
    return f


def cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return typed(compose(config_name="evaluate", overrides=[
            "model=tiny_llama", f"job.results_file={tmp_path / 'rows.jsonl'}", "job.progress=false", *overrides]))


def ppl_overrides(text_file):
    return ["eval=ppl", f"eval.perplexity.datasets=[{text_file}]", "eval.perplexity.seq_len=[32,64]",
            "eval.perplexity.max_windows=4"]


def no_model_load(monkeypatch):
    monkeypatch.setattr(ev, "load_from_config", lambda *a, **k: pytest.fail("model loaded before validation"))


@pytest.mark.parametrize("overrides,error", [
    (["eval=zeroshot", "eval.zeroshot.tasks=[arc_easy,mmlu]"], "unknown zero-shot task"),
    (["eval=ppl", "eval.perplexity.seq_len=[1]"], "must be ≥ 2"),
    (["eval=ppl", "eval.perplexity.datasets=[no_such_set]"], "unknown perplexity dataset"),
    (["eval=speed", "eval.speed.repeats=0"], "repeats must be ≥ 1"),
    (["eval=speed", "model.path=/does/not/exist"], "not a checkpoint folder"),
])
def test_bad_input_fails_before_loading_the_model(tmp_path, monkeypatch, overrides, error):
    no_model_load(monkeypatch)
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        ev.run_evaluate(cfg(tmp_path, *overrides), tmp_path / "run")


def test_perplexity_rows_and_a_rerun_skips_the_complete_run(tmp_path, monkeypatch, text_file):
    c = cfg(tmp_path, *ppl_overrides(text_file))
    rows = ev.run_evaluate(c, tmp_path / "run")
    assert [r["metric"] for r in rows] == ["kept_fraction", "achieved_sparsity", "ppl/pydoc@32", "ppl/pydoc@64"]
    assert all(tuple(r) == ROW_FIELDS for r in rows)
    ppl = rows[2]
    assert ppl["limit"] == "max_windows=4" and ppl["n"] == 4 * 31 and ppl["pruner"] == "dense"
    windows = ppl["extra"]["window_nll"]  # per-window NLL sums: bootstrap intervals over windows
    assert len(windows) == 4 and ppl["extra"]["window_tokens"] == 31
    assert math.exp(sum(windows) / (4 * 31)) == pytest.approx(ppl["value"])
    df = read_rows(tmp_path / "rows.jsonl")
    assert len(df) == 4 and df["run_id"].nunique() == 1
    assert (tmp_path / "run" / "rows.jsonl").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["run_id"] == rows[0]["run_id"]

    no_model_load(monkeypatch)  # same config → same run id → skipped without loading anything
    c2 = cfg(tmp_path, *ppl_overrides(text_file), "job.progress=true")
    assert ev.run_evaluate(c2, tmp_path / "run2") == []
    assert run_identity(c2)[0] == rows[0]["run_id"]  # bookkeeping: same id


def test_pruned_checkpoint_provenance_and_speedup(tmp_path, calib_ids, tokenizer, text_file):
    model = tiny_model("llama")
    _, plan = prune(model, calib_ids, sparsity=0.5, gamma=1.0)
    ckpt = save_pruned(model, plan, tmp_path / "ckpt", tokenizer)
    rows = ev.run_evaluate(cfg(tmp_path, "eval=speed", f"model.path={ckpt}", *SMALL_SPEED), tmp_path / "run")
    by_metric = {r["metric"].split("@")[0]: r for r in rows}
    assert {"prefill_tok_s", "decode_tok_s", "decode_speedup", "decode_flop_ratio", "decode_efficiency"} <= set(by_metric)
    assert 0 < by_metric["decode_flop_ratio"]["value"] < 1
    r = rows[0]
    assert (r["pruner"], r["sparsity"], r["gamma"], r["checkpoint"]) == ("nirvana", 0.5, 1.0, str(ckpt.resolve()))
    assert by_metric["decode_tok_s"]["metric"] == "decode_tok_s@bs1,p16,n4"


@pytest.mark.slow  # reads the built benchmark data (make assets)
def test_cli_zeroshot_rows_and_summary_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", "model=tiny_llama", "eval=zeroshot", "eval.limit=4",
         "eval.zeroshot.tasks=[piqa,winogrande]", f"job.results_file={tmp_path / 'rows.jsonl'}",
         f"hydra.run.dir={tmp_path / 'run'}", "job.progress=false"],
        capture_output=True, text=True, cwd=Path(CONF).parent,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "zero-shot mean" in out.stdout and "5 rows" in out.stdout
    df = read_rows(tmp_path / "rows.jsonl")
    assert list(df["task"]) == ["pruning", "pruning", "piqa", "winogrande", "average"]
    assert list(df[df["task"] == "pruning"]["value"]) == [1.0, 0.0]  # a dense model: all kept, nothing removed
    items = df[df["task"] == "piqa"]["extra"].iloc[0]["items"]  # per-item results, for paired comparisons
    assert len(items) == 4 and set(items) <= {0.0, 1.0} and sum(items) / 4 == df[df["task"] == "piqa"]["value"].iloc[0]
    df = df[df["task"] != "pruning"]
    assert list(df["metric"]) == ["acc", "acc", "mean_task_metric"]
    assert set(df["limit"]) == {4} and set(df["suite"]) == {"local"} and set(df["n"]) == {4, 2}
    assert df["stderr"].notna().all()
