"""Bad input fails early and clearly, numerical faults never pass silently, nothing is deleted by surprise, an
interrupted write leaves nothing partial, and the bf16 path runs (one test per row of the hardening table)."""

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from fixture_text import PYDOC_FILE
from hydra import compose, initialize_config_dir

from experiments.prune import run_prune
from nirvana.config import typed
from nirvana.evaluation.perplexity import evaluate_perplexity
from nirvana.evaluation.zeroshot import evaluate_zeroshot
from nirvana.pruners import compute_plan, prune
from nirvana.results import read_rows
from nirvana.surgery.checkpoint import load_pruned, save_pruned
from nirvana.tiny import pydoc_text, tiny_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_llama", "calibration=pydoc", "calibration.n_samples=4", "calibration.seq_len=32"]


def cfg(*overrides, name="prune"):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return typed(compose(config_name=name, overrides=list(overrides)))


@pytest.fixture
def no_load(monkeypatch):
    import experiments.prune as mod

    monkeypatch.setattr(mod, "load_from_config", lambda *a, **k: pytest.fail("model loaded before validation"))


@pytest.mark.parametrize("overrides,error", [
    (["sparsity=1.0"], r"sparsity must be in \[0, 1\)"),
    (["gamma=0"], "gamma must be a finite number > 0"),
    (["gamma=.nan"], "gamma must be a finite number > 0"),
    (["gamma=.inf"], "gamma must be a finite number > 0"),
    (["sparsity=0.9", "gamma=3.36"], r"largest feasible sparsity is below 0\.\d+"),
    (["pruner=taylor", "pruner.layer_start=1", "pruner.layer_end=null", "sparsity=0.8"], "both must stay below 1"),
    (["calibration.seq_len=300"], "calibration.seq_len=300 exceeds the model's context of 256 tokens"),
    (["calibration.selection=kl", "calibration.probe.seq_len=300"],
     "calibration.probe.seq_len=300 exceeds the model's context of 256 tokens"),
])
def test_bad_hyperparameters_fail_before_the_model_loads(overrides, error, no_load, tmp_path):
    with pytest.raises(ValueError, match=error):
        run_prune(cfg(*TINY, *overrides), tmp_path)
    assert not list(tmp_path.iterdir())  # no partial output


def test_unknown_missing_or_corrupt_models_fail_before_loading(no_load, tmp_path):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'.*llama, mistral, qwen2, qwen3, t5"):
        run_prune(cfg(*TINY, f"model.name_or_path={gpt2}"), tmp_path / "a")
    (gpt2 / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config cannot be read"):
        run_prune(cfg(*TINY, f"model.name_or_path={gpt2}"), tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id"):
        run_prune(cfg(*TINY, "model.name_or_path=no_such_model"), tmp_path / "c")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="without config.json"):
        run_prune(cfg(*TINY, f"model.name_or_path={empty}"), tmp_path / "d")


def test_empty_or_malformed_calibration_files_are_named_before_loading(no_load, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=rf"{bad}:3: not a JSON object"):
        run_prune(cfg(*TINY, "calibration=text_file", f"calibration.path={bad}"), tmp_path / "a")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ValueError, match="holds no text"):
        run_prune(cfg(*TINY, "calibration=text_file", f"calibration.path={empty}"), tmp_path / "b")


def test_the_cli_exits_non_zero_with_one_clear_message(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.prune", *TINY, "sparsity=0.95",
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "largest feasible sparsity" in out.stderr
    assert not (tmp_path / "run" / "pruning_plan.json").exists()


def test_nan_weights_stop_the_run_naming_the_unit_and_leave_the_cache_untouched(calib_ids, tmp_path):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.gate_proj.weight[5, 0] = math.nan
    with pytest.raises(ValueError, match=r"1 non-finite unit scores \(layer 1 mlp unit 5\)"):
        compute_plan(model, calib_ids, "magnitude", sparsity=0.3, score_cache=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="pruner 'nirvana' gave .* non-finite unit scores"):  # NaN outputs: all
        compute_plan(model, calib_ids, "nirvana", sparsity=0.3, score_cache=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())  # nothing cached


def test_a_non_finite_kl_or_perplexity_is_an_error(calib_ids, tokenizer):
    from nirvana.probe import kl_to_dense

    model = tiny_model("llama")
    plan = compute_plan(model, calib_ids, "magnitude", sparsity=0.3)
    with torch.no_grad():
        model.model.norm.weight[0] = math.inf  # not a prunable unit: scores can be fine, outputs are not
    with pytest.raises(ValueError, match="KL to the dense model is not finite"):
        kl_to_dense(model, plan, calib_ids[:2, :16], 16)
    with pytest.raises(ValueError, match="non-finite NLL"):
        evaluate_perplexity(model, tokenizer, "pydoc", seq_len=32, texts=[pydoc_text()[:4000]], progress=False)


def test_an_existing_save_dir_is_refused_unless_overwrite(tmp_path, no_load):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="exists and is not empty.*overwrite=true"):
        run_prune(cfg(*TINY, f"save_dir={target}"), tmp_path / "run")
    assert (target / "precious.txt").read_text() == "keep me"


def test_overwrite_replaces_and_is_recorded(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("x")
    run_prune(cfg(*TINY, f"save_dir={target}", "overwrite=true"), tmp_path / "run")
    assert not (target / "old.txt").exists() and (target / "pruning_plan.json").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["overwrite"] is True


def test_remote_code_runs_only_for_our_own_checkpoints_unless_configured(tmp_path):
    from nirvana.models import MODELING_FILE, trusts_code

    ours = tmp_path / "pruned"
    ours.mkdir()
    (ours / MODELING_FILE).write_text("# the modeling file save_pruned ships")
    assert trusts_code(str(ours)) is True
    assert trusts_code("meta-llama/Llama-3.1-8B") is False and trusts_code(str(tmp_path)) is False
    assert trusts_code("meta-llama/Llama-3.1-8B", True) is True and trusts_code(str(ours), False) is False
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):  # no shipped model opts in
        for model in sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")):
            assert compose(config_name="prune", overrides=[f"model={model}"]).model.trust_remote_code is None, model


def test_every_torch_load_refuses_pickled_code():
    """A `torch.load` without `weights_only=True` would run any code a state file carries."""
    import ast

    calls = []
    for path in [*(ROOT / "nirvana").rglob("*.py"), *(ROOT / "experiments").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert calls, "no torch.load found: the scan itself is broken"
    assert [where for where, safe in calls if not safe] == []


def test_the_score_cache_key_sees_a_permutation_of_the_weights():
    from nirvana.scoring.cache import cache_key

    ids = torch.zeros(2, 8, dtype=torch.long)
    a, b = tiny_model("llama"), tiny_model("llama")
    assert cache_key(a, "nirvana", {}, ids) == cache_key(b, "nirvana", {}, ids)
    with torch.no_grad():  # same sum and abs-sum per tensor (what the old fingerprint saw), different weights
        w = b.model.layers[0].mlp.up_proj.weight
        w[[0, 1]] = w[[1, 0]].clone()
    assert cache_key(a, "nirvana", {}, ids) != cache_key(b, "nirvana", {}, ids)
    assert cache_key(a, "nirvana", {}, ids) != cache_key(a, "nirvana", {"target": "loss"}, ids)


def test_a_failed_score_cache_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import safetensors.torch

    from nirvana.scoring.cache import save_scores
    from nirvana.scoring.units import UnitScores

    def half_write(tensors, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_scores(tmp_path, "key", UnitScores([torch.ones(2)], [torch.ones(4)]))
    assert not list(tmp_path.iterdir())


def test_corrupt_rows_lines_are_skipped_with_a_warning_naming_file_and_line(tmp_path):
    from nirvana.results import make_row

    f = tmp_path / "rows.jsonl"
    good = json.dumps(make_row({"run_id": "a"}, "t", "m", 1.0)).encode()
    f.write_bytes(good + b"\n{not json\n" + b"\xff\xfe bad utf-8\n" + b"[1, 2]\n" + good + b"\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = read_rows(f)
    assert len(df) == 2
    assert sorted(str(w.message).split(": ")[0] for w in caught) == [f"{f}:2", f"{f}:3", f"{f}:4"]


KILLED_SAVE = textwrap.dedent("""
    import sys, time
    import torch
    from nirvana.surgery.checkpoint import save_pruned
    from nirvana.pruners import prune
    from nirvana.tiny import tiny_model, tiny_tokenizer
    model = tiny_model("llama")
    prune(model, None, pruner="magnitude", sparsity=0.3, gamma=1.0)
    real = model.save_pretrained
    def slow_save(folder, **kw):  # part of the checkpoint is on disk when the process is killed
        real(folder, **kw)
        print("saving", flush=True)
        time.sleep(60)
    model.save_pretrained = slow_save
    save_pruned(model, None, sys.argv[1], tiny_tokenizer())
""")


def test_kill_9_during_a_checkpoint_save_leaves_no_partial_checkpoint(tmp_path):
    target = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    first = proc.stdout.readline().strip()
    assert first == "saving", proc.communicate()[1]  # the child's traceback, when it died before saving
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists()  # the half-written folder is a hidden temporary sibling, never the checkpoint
    model = tiny_model("llama")
    prune(model, None, pruner="magnitude", sparsity=0.3, gamma=1.0)
    save_pruned(model, None, target)  # a rerun completes
    assert load_pruned(target).config.model_type == "llama"


def test_kill_9_during_a_run_leaves_no_rows_and_a_rerun_completes(tmp_path):
    rows = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "experiments.run", *TINY, "calibration.probe.n_samples=4",
           "calibration.probe.seq_len=16", "eval=ppl", f"eval.perplexity.datasets=[{PYDOC_FILE}]",
           "eval.perplexity.seq_len=[32]", f"job.results_file={rows}", "job.score_cache=null",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "pruning_plan.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # killed once pruned, while evaluating
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not rows.exists() or read_rows(rows).empty
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    assert set(read_rows(rows)["task"]) == {"pruning", "calibration", "pydoc"}


@pytest.mark.parametrize("pruner", ["nirvana", "taylor", "magnitude", "wanda_sp", "flap"])
def test_the_bf16_path_prunes_saves_reloads_and_evaluates(pruner, calib_ids, tokenizer, tmp_path):
    """bf16 on CPU: plans may differ from fp32, but every stage must run and give finite, close numbers."""
    torch.set_num_threads(1)
    model32 = tiny_model("llama")
    model16 = tiny_model("llama", dtype=torch.bfloat16)
    _, plan = prune(model16, calib_ids, pruner=pruner, sparsity=0.3, gamma=1.0)
    _, plan32 = prune(model32, calib_ids, pruner=pruner, sparsity=0.3, gamma=1.0)
    assert abs(plan.kept_fraction - plan32.kept_fraction) < 0.02  # the same budget, whatever the units chosen
    ckpt = save_pruned(model16, plan, tmp_path / "ckpt", tokenizer)
    reloaded = load_pruned(ckpt).eval()
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    ids = calib_ids[:2, :16]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model16(ids).logits)
    texts = [pydoc_text()[:6000]]
    ppl16 = evaluate_perplexity(reloaded, tokenizer, "pydoc", seq_len=32, texts=texts, progress=False).ppl
    ppl32 = evaluate_perplexity(model32, tokenizer, "pydoc", seq_len=32, texts=texts, progress=False).ppl
    assert math.isfinite(ppl16) and ppl16 == pytest.approx(ppl32, rel=0.5)


@pytest.mark.slow
def test_smollm2_prunes_and_evaluates_in_bf16(smollm2_tokenizer, smollm2_calibration):
    from nirvana.models import load_model

    # 32 calibration tokens and four texts: a bfloat16 matmul on a CPU without native bf16 costs ~85 ms (one 128-token
    # scoring row alone took 46 s), and the properties checked here — a plan at the budget, finite outputs — need no
    # more.
    model, _ = load_model("builtin:smollm2-135m-instruct", dtype="bfloat16", device="cpu")
    _, plan = prune(model, smollm2_calibration[:1, :32], pruner="nirvana", sparsity=0.2, gamma=3.36)
    assert 0.8 < plan.kept_fraction < 0.9
    ppl = evaluate_perplexity(model, smollm2_tokenizer, "lambada_head", seq_len=128, max_texts=4, progress=False)
    assert math.isfinite(ppl.ppl) and ppl.ppl < 1000
    res = evaluate_zeroshot(model, smollm2_tokenizer, ["arc_easy"], limit=4, batch_size=4, max_length=512)
    assert 0 <= res.scores[0].value <= 1
