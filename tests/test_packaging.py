"""Set-up files agree with each other: pyproject, environment.yml, Makefile."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(spec: str) -> str:
    for sep in ("==", ">=", "<=", "<", ">", "["):
        spec = spec.split(sep)[0]
    return spec.strip().lower()


def test_environment_yml_lists_the_same_requirements_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(s): s for s in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(s): s for s in pip}
    assert set(listed) == set(wanted)
    for name, spec in wanted.items():
        if name == "torch":  # pyproject leaves the build to TORCH_SPEC; environment.yml pins the tested one
            continue
        assert listed[name].replace(" ", "") == spec.replace(" ", ""), name


def test_exact_pins_for_what_changes_numbers():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for pkg in ("transformers", "tokenizers", "datasets", "lm-eval"):
        spec = next(s for s in deps if _name(s) == pkg)
        assert "==" in spec, spec


def test_makefile_installs_torch_first_from_a_variable():
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^TORCH_SPEC\s*\?=\s*torch==", text, re.M)
    assert text.index("$(TORCH_SPEC)") < text.index('pip install -e ".[dev]"')


@pytest.mark.slow  # the recovery sweep's preflight checks its built training text
def test_make_sweep_status_lists_each_run_once_and_counts_what_is_left(tmp_path):
    # the recovery sweep: three runs; none is in an empty results file
    out = subprocess.run(
        ["make", "-s", "-o", ".venv/.setup-done", "sweep-status", f"PY={sys.executable}",
         "EXPERIMENT=recovery_offline", f"ARGS=job.results_file={tmp_path / 'rows.jsonl'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "3 of 3 runs still to run"
    assert [line.split(" (")[1].split()[0] for line in lines[:-1]] == ["nirvana", "flap", "taylor"]


@pytest.mark.slow  # the recovery sweep's preflight checks its built training text
def test_make_sweep_status_says_where_an_invalid_sweep_stops(tmp_path):
    # a sparsity no pruner accepts: the first run fails its checks, so nothing is listed and nothing is counted
    out = subprocess.run(
        ["make", "-s", "-o", ".venv/.setup-done", "sweep-status", f"PY={sys.executable}",
         "EXPERIMENT=recovery_offline", f"ARGS=job.results_file={tmp_path / 'rows.jsonl'} sparsity=1.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert out.stdout.strip().splitlines()[-1] == "the sweep stops at an invalid run after these 0 (its error is above)"
    assert "sparsity" in out.stderr
