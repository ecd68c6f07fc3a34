"""Experiment configs, the run entry point, resumable sweeps, and the report — on tiny models."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
from fixture_text import PYDOC_FILE
from hydra import compose, initialize_config_dir
from rows_fixture import fixture_rows

from experiments.run import run_experiment
from nirvana.config import typed
from nirvana.evaluation.protocol import run_identity
from nirvana.results import append_rows, read_rows

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
# recovery_offline trains on a built text set (the LAMBADA tail), so it needs `make assets`
READS_ASSETS = {"recovery_offline"}
NAMES = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# Shrink any experiment to seconds: tiny model, tiny calibration and probe, 2 items per task, 4 windows.
TINY = [
    "model=tiny_llama", "calibration=pydoc", "calibration.n_samples=4", "calibration.seq_len=32",
    "calibration.candidates=2", "calibration.probe.n_samples=4", "calibration.probe.seq_len=16",
    "job.score_cache=null", "job.progress=false",
]
SHRINK = [*TINY, "eval=quick", "eval.limit=2", "eval.zeroshot.tasks=[arc_easy]", "eval.perplexity.max_windows=4",
          "eval.speed=null"]
PPL_ONLY = [*TINY, "eval=ppl", "eval.perplexity.seq_len=[32]", f"eval.perplexity.datasets=[{PYDOC_FILE}]",
            "eval.perplexity.max_windows=4"]


def cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return typed(compose(config_name="run", overrides=list(overrides)))


def _needs_llamacpp(name: str) -> bool:
    """Sweeps with a deploy stage evaluate in llama.cpp (the opt-in extra; marker `llamacpp`)."""
    return "override /deploy" in (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()


EXPERIMENTS = [pytest.param(n, marks=[*([pytest.mark.slow] if n in READS_ASSETS else []),
                                      *([pytest.mark.llamacpp] if _needs_llamacpp(n) else [])]) for n in NAMES]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_runs_shrunk(name, tmp_path):
    # perplexity only: the zero-shot path has its own tests (test_zeroshot, test_evaluate_cli, the test below)
    c = cfg(f"experiment={name}", *PPL_ONLY, f"job.results_file={tmp_path / 'rows.jsonl'}", "job.requires.gpu=false",
            "job.requires.hub=false")
    if c.deploy is not None:  # evaluated in llama.cpp: the opt-in extra
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make setup-llamacpp)")
    rows = run_experiment(c, tmp_path / "run")
    by_metric = {r["metric"]: r for r in rows}
    assert {r["model"] for r in rows} == {"tiny_llama"} and {r["pruner"] for r in rows} == {c.pruner.name}
    assert 0 < by_metric["kept_fraction"]["value"] <= 1 and "ppl/pydoc@32" in by_metric
    if c.pruner.name != "dense":  # the per-layer widths the allocation figure draws from rows
        w = by_metric["kept_fraction"]["extra"]["widths"]
        assert len(set(map(len, w.values()))) == 1 and all(k <= n for k, n in zip(w["kept_groups"], w["n_groups"]))
        assert sum(w["kept_neurons"]) < sum(w["n_neurons"]) or sum(w["kept_groups"]) < sum(w["n_groups"])
    assert all(math.isfinite(r["value"]) for r in rows)
    assert {r["run_id"] for r in rows} == {run_identity(c)[0]}


@pytest.mark.slow  # the local zero-shot tasks need the benchmark data (make assets)
def test_a_run_with_every_stage(tmp_path):
    c = cfg(*SHRINK, "pruner=flap", f"job.results_file={tmp_path / 'rows.jsonl'}")
    rows = run_experiment(c, tmp_path / "run")
    assert {"pruning", "calibration", "wiki_passages", "arc_easy", "average"} <= {r["task"] for r in rows}


def test_experiment_sweeps_live_in_the_files():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        c = compose(config_name="run", overrides=["experiment=demo"], return_hydra_config=True)
    params = c.hydra.sweeper.params
    assert set(params.pruner.split(",")) >= {"dense", "nirvana", "magnitude", "wanda_sp_matched", "flap"}
    assert params.sparsity == "0.2,0.4"


def test_dense_runs_share_one_id_whatever_the_sweep_says():
    def rid(*overrides):
        return run_identity(cfg(*overrides))[0]

    a, b = rid("pruner=dense", "sparsity=0.2"), rid("pruner=dense", "sparsity=0.4", "calibration=pydoc", "gamma=1")
    c = rid("pruner=nirvana", "sparsity=0.2")
    d = rid("pruner=nirvana", "sparsity=0.2", "job.results_file=elsewhere.jsonl", "job.force=true")
    assert a == b and a != c and c == d
    assert rid("pruner=nirvana", "gamma=1") != c  # γ counts where the pruner reads it …
    assert rid("pruner=flap", "gamma=1") == rid("pruner=flap")  # … and not where it does not


def test_multirun_with_joblib_resumes_and_recomputes_only_what_is_missing(tmp_path):
    rows_file = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "experiments.run", "-m", *PPL_ONLY, "pruner=nirvana,magnitude", "sparsity=0.3",
           f"job.results_file={rows_file}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    df = read_rows(rows_file)
    assert set(df["pruner"]) == {"nirvana", "magnitude"}
    # one run's rows lost: the rerun skips the run still recorded and recomputes only the other
    kept = df[df["pruner"] == "nirvana"]
    rows_file.unlink()
    append_rows(rows_file, kept.to_dict("records"))  # lose magnitude's rows
    rerun = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert rerun.returncode == 0 and rerun.stdout.count("already complete") == 1, rerun.stdout[-2000:]
    assert set(read_rows(rows_file)["pruner"]) == {"nirvana", "magnitude"}


def test_a_crash_mid_run_leaves_no_rows(tmp_path, monkeypatch):
    from nirvana.evaluation import protocol

    def boom(*a, **k):
        raise RuntimeError("killed during evaluation")

    monkeypatch.setattr(protocol, "perplexity_rows", boom)
    c = cfg(*PPL_ONLY, f"job.results_file={tmp_path / 'rows.jsonl'}")
    with pytest.raises(RuntimeError):
        run_experiment(c, tmp_path / "run")
    assert not (tmp_path / "rows.jsonl").exists() or read_rows(tmp_path / "rows.jsonl").empty


def test_preflight_stops_before_loading_when_gpu_or_hub_is_missing(tmp_path, monkeypatch):
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_from_config", lambda *a, **k: pytest.fail("model loaded"))
    monkeypatch.setattr("nirvana.requirements.hub_reachable", lambda timeout=5.0: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU|needs the Hugging Face hub"):
        run_experiment(cfg("experiment=table2", "job.preflight=true"), tmp_path)


def test_preflight_says_what_a_launch_would_do_without_loading_a_model(tmp_path, monkeypatch, caplog):
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_from_config", lambda *a, **k: pytest.fail("model loaded"))
    results = tmp_path / "rows.jsonl"
    c = cfg(*PPL_ONLY, "pruner=wanda_sp_matched", "sparsity=0.3", f"job.results_file={results}", "job.preflight=true")
    run_id = run_identity(c)[0]
    with caplog.at_level("INFO", logger="experiments.run"):
        assert run_experiment(c, tmp_path / "run") == []
    assert f"run {run_id} tiny_llama (wanda_sp:matched s=0.3" in caplog.text and "— to run" in caplog.text
    append_rows(results, [{**fixture_rows()[0], "run_id": run_id}])  # the run has finished since
    caplog.clear()
    with caplog.at_level("INFO", logger="experiments.run"):
        run_experiment(c, tmp_path / "run")
    assert "complete, would be skipped" in caplog.text and "to run" not in caplog.text


def test_a_run_finished_in_a_done_in_file_is_skipped_and_force_still_recomputes(tmp_path, monkeypatch, caplog):
    """A sweep that extends another (Table 2 over more calibration draws) lists the other's rows file in
    job.done_in: its finished runs are not run again, and nothing is written to this sweep's own file."""
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_from_config", lambda *a, **k: pytest.fail("model loaded"))
    other, own = tmp_path / "table2.jsonl", tmp_path / "draws.jsonl"
    c = cfg(*PPL_ONLY, "pruner=nirvana", "sparsity=0.3", f"job.results_file={own}", f"job.done_in=[{other}]")
    append_rows(other, [{**fixture_rows()[0], "run_id": run_identity(c)[0]}])
    with caplog.at_level("INFO", logger="experiments.run"):
        assert run_experiment(c, tmp_path / "run") == []
    assert f"already complete in {other}" in caplog.text and not own.exists()
    forced = cfg(*PPL_ONLY, "pruner=nirvana", "sparsity=0.3", f"job.results_file={own}", f"job.done_in=[{other}]",
                 "job.force=true")
    monkeypatch.setattr(run_mod, "load_from_config", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("loaded")))
    with pytest.raises(RuntimeError, match="loaded"):  # force ignores done_in: it gets as far as loading the model
        run_experiment(forced, tmp_path / "run")


def test_wandb_logger_runs_offline_without_an_account(tmp_path, monkeypatch):
    from nirvana.loggers import LoggerConfig, NullLogger, WandbLogger, make_logger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = make_logger(LoggerConfig(kind="wandb", project="test", mode="offline"))
    assert isinstance(logger, WandbLogger)
    logger.log_config({"a": 1})
    logger.log_rows(fixture_rows()[:5])
    logger.finish()
    assert isinstance(make_logger(LoggerConfig()), NullLogger)
    with pytest.raises(ValueError, match="unknown logger"):
        LoggerConfig(kind="tensorboard")


def test_wandb_failure_never_fails_the_run(monkeypatch):
    import wandb

    from nirvana.loggers import WandbLogger

    def refuse(**kwargs):
        raise RuntimeError("not logged in")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.warns(UserWarning, match="wandb logging disabled"):
        logger = WandbLogger()
    logger.log_rows(fixture_rows())  # a no-op, no exception
    logger.finish()
