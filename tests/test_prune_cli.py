"""The prune entry point on a tiny model: composed from the real configs, shrunk."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments.prune import run_prune
from nirvana.config import typed
from nirvana.surgery.plan import PruningPlan

CONF = str(Path(__file__).resolve().parents[1] / "conf")
TINY = ["model=tiny_llama", "calibration=pydoc", "calibration.n_samples=4", "calibration.seq_len=32"]


def cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return typed(compose(config_name="prune", overrides=list(overrides)))


def test_tensor_calibration_replays_the_same_plan(tmp_path):
    _, plan = run_prune(cfg(*TINY, "sparsity=0.4"), tmp_path / "a")
    assert PruningPlan.load(tmp_path / "a").same_decision(plan)
    ids = torch.load(tmp_path / "a" / "calibration.pt")
    assert ids.shape == (4, 32)
    _, again = run_prune(
        cfg("model=tiny_llama", "calibration=tensor", f"calibration.path={tmp_path / 'a' / 'calibration.pt'}",
            "sparsity=0.4"),
        tmp_path / "b",
    )
    assert again.same_decision(plan)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["params_after"] == plan.params_after


def test_magnitude_needs_no_calibration(tmp_path):
    _, plan = run_prune(cfg(*TINY, "pruner=magnitude", "sparsity=0.3"), tmp_path)
    assert plan.pruner == "magnitude"
    assert not (tmp_path / "calibration.pt").exists()


def test_bad_sparsity_fails_before_loading_the_model(tmp_path, monkeypatch):
    import experiments.prune as mod

    monkeypatch.setattr(mod, "load_from_config", lambda *a, **k: pytest.fail("model loaded before validation"))
    with pytest.raises(ValueError, match="sparsity must be in"):
        run_prune(cfg(*TINY, "sparsity=1.2"), tmp_path)


def test_cli_saves_a_loadable_checkpoint(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.prune", *TINY, "sparsity=0.5", f"save_dir={tmp_path / 'ck'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=Path(CONF).parent,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "nirvana s=0.5" in out.stdout
    assert (tmp_path / "ck" / "pruning_plan.json").exists()
    assert (tmp_path / "ck" / "modeling_nirvana.py").exists()
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()
