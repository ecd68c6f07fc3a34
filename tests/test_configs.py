"""Every Hydra config composes: each primary config with every option of every group in its defaults."""

import functools
import itertools
import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nirvana.atomic import iter_jsonl
from nirvana.config import typed

CONF = Path(__file__).resolve().parents[1] / "conf"
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))


def _groups(primary: str) -> list[str]:
    defaults = yaml.safe_load((CONF / f"{primary}.yaml").read_text()).get("defaults", [])
    return [next(iter(d)) for d in defaults if isinstance(d, dict) and (CONF / next(iter(d))).is_dir()]


CASES = [
    (primary, group, option.stem)
    for primary in PRIMARY
    for group in _groups(primary)
    for option in sorted((CONF / group).glob("*.yaml"))
]


@pytest.mark.parametrize("primary,group,option", CASES, ids=[f"{p}:{g}={o}" for p, g, o in CASES])
def test_config_composes_and_resolves(primary, group, option):
    overrides = [f"{group}={option}"]
    if group == "calibration" and option in ("tensor", "text_file"):
        overrides.append("calibration.path=/some/file")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=primary, overrides=overrides)
    OmegaConf.resolve(cfg)  # every interpolation must resolve (no dangling ${...})
    first = (CONF / group / f"{option}.yaml").read_text().splitlines()[0]
    package = first.removeprefix("# @package ").strip() if first.startswith("# @package") else group
    if package != "_global_":  # experiments and recipes are global deltas: no key of their own
        assert OmegaConf.select(cfg, package) is not None


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_slurm"])
def test_hydra_launchers_compose(launcher):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[f"hydra/launcher={launcher}", "experiment=demo"],
                      return_hydra_config=True)
    assert launcher.split("_")[0] in cfg.hydra.launcher._target_.lower()


def test_every_output_folder_time_has_microseconds():
    # two sweeps started in the same second (a sweep split by overrides, a job array) must not share a folder:
    # the second would overwrite the first's plans and configs
    stamps = {p.relative_to(CONF): re.findall(r"\$\{now:([^}]*)\}", p.read_text()) for p in CONF.rglob("*.yaml")}
    stamps = {path: found for path, found in stamps.items() if found}
    assert stamps, "no output folder uses ${now:...}: update this test"
    assert all("%f" in pattern for found in stamps.values() for pattern in found), stamps


def test_config_files_open_with_the_command_that_runs_them():
    for path in CONF.rglob("*.yaml"):
        head = path.read_text().lstrip().splitlines()[:6]
        assert any("python -m" in line or "make " in line for line in head if line.startswith("#")), path


def _committed_rows() -> list[Path]:
    results = CONF.parent / "results"
    return sorted([*results.glob("rows/*.jsonl"), *results.glob("demo/rows.jsonl")])


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@functools.cache
def _sweep_of(experiment: str, model: str) -> tuple[Path, tuple[tuple[str, tuple[str, ...]], ...]]:
    """The results file an experiment writes for a model and its sweep's parameters. Cached: composing costs about
    a third of a second and both provenance tests ask for every (experiment, model) of every rows file."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[f"experiment={experiment}", f"model={model}"],
                      return_hydra_config=True)
    params = tuple((k, tuple(str(v).split(","))) for k, v in (cfg.hydra.sweeper.params or {}).items())
    return (CONF.parent / cfg.job.results_file).resolve(), params


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_sweep_starts_with_a_point_that_composes(experiment):
    """A sweep's parameters merge with those of the experiment it extends: an inherited `pruner` list next to a
    `recipe` list (each recipe chooses its own pruner) composes alone but fails at the sweep's first point, so
    `make reproduce-…` would stop at once. One compose per experiment: the first point of its sweep."""
    _, params = _sweep_of(experiment, "smollm2_135m")
    if not params:
        pytest.skip(f"{experiment} is a single run, not a sweep")
    names = [name for name, _ in params]
    assert not {"recipe", "pruner"} <= set(names), f"{experiment} sweeps both recipe and pruner: {names}"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        compose(config_name="run", overrides=[f"experiment={experiment}", "model=smollm2_135m",
                                              *(f"{name}={values[0]}" for name, values in params)])


@pytest.mark.parametrize("path", _committed_rows(), ids=lambda p: str(p.relative_to(CONF.parent)))
def test_every_committed_rows_file_comes_from_a_clean_tree_and_a_shipped_experiment(path):
    """Provenance of what the repository publishes: each row names a clean commit, and the file is the results
    file of a shipped experiment config (for the model its rows name), so a rerun of that config resumes it."""
    rows = list(iter_jsonl(path))
    assert rows and not [r["run_id"] for r in rows if str(r.get("git_hash", "")).endswith("-dirty")]
    targets = {_sweep_of(experiment, model)[0] for experiment in EXPERIMENTS for model in {r["model"] for r in rows}}
    assert path.resolve() in targets


@pytest.mark.parametrize("path", _committed_rows(), ids=lambda p: str(p.relative_to(CONF.parent)))
def test_every_committed_run_id_is_one_a_shipped_sweep_computes(path):
    """Resuming needs the ids to match: every run id in a committed rows file is the id of one point of a shipped
    experiment's sweep writing to that file, as the configs and run_identity compute it today (a new option in a
    pruner config, or a change to the identity, must not orphan published rows)."""
    from nirvana.evaluation.protocol import run_identity

    rows = list(iter_jsonl(path))
    computed = set()
    for experiment in EXPERIMENTS:
        for model in {r["model"] for r in rows}:
            results_file, params = _sweep_of(experiment, model)
            if results_file != path.resolve():
                continue
            base = [f"experiment={experiment}", f"model={model}"]
            names = [name for name, _ in params]
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                for values in itertools.product(*(values for _, values in params)):
                    point = compose(config_name="run", overrides=[*base, *map("=".join, zip(names, values))])
                    computed.add(run_identity(typed(point))[0])
    assert {r["run_id"] for r in rows} <= computed


def _identity(*overrides: str) -> tuple[str, dict]:
    """(run id, hashed config) of the run config composed with `overrides`, as a launch computes them."""
    from nirvana.evaluation.protocol import run_identity

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=list(overrides))
    return run_identity(typed(cfg))


def test_schedule_options_never_change_a_run_id():
    """Memory options choose how scores are computed, not which: the same run whatever the budget or tolerance;
    a real option (sparsity) still does."""
    def run_id(*overrides):
        return _identity("pruner=nirvana", *overrides)[0]

    base = run_id()
    assert run_id("pruner.time_tolerance=0.0", "pruner.memory_budget_gib=3", "pruner.schedule=manual") == base
    assert run_id("sparsity=0.45") != base


def test_llama_cpp_threads_and_keeping_the_file_never_change_a_run_id():
    """In exact mode llama.cpp's numbers do not depend on its thread count (docs/deploy.md); the GGUF type does."""
    def run_id(*overrides):
        return _identity("experiment=gguf_offline", "pruner=nirvana", *overrides)[0]

    base = run_id("deploy.type=q8_0")
    assert run_id("deploy.type=q8_0", "deploy.threads=1", "deploy.keep=true") == base
    assert run_id("deploy.type=q4_k_m") != base


def test_a_later_eval_option_at_its_published_value_keeps_the_run_id():
    """eval.zeroshot.softmax_dtype came after rows were published: float32 (what those float32 runs computed)
    hashes as if the key were absent; lm-eval's default (null) is another run."""
    def run_id(*overrides):
        return _identity("pruner=nirvana", *overrides)
    base, identity = run_id()
    assert "softmax_dtype" not in identity["eval"]["zeroshot"]
    assert run_id("eval.zeroshot.softmax_dtype=null")[0] != base
