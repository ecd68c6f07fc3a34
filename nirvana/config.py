"""Typed configs: every entry point's Hydra config as dataclasses, registered in Hydra's ConfigStore.

Each stage owns its schema, beside the code that reads it — ModelConfig (nirvana.models), the pruners'
(nirvana.pruners.config), CalibrationConfig (nirvana.calibration.config), EvalConfig (nirvana.evaluation.config),
RecoveryConfig (nirvana.recovery.config), QuantSpec (nirvana.quantization), LoggerConfig (nirvana.loggers). This
module assembles them into the roots the entry points compose (conf/run.yaml extends `run_schema`, …) and
registers each pruner's schema as `<name>_schema` in the pruner group (conf/pruner/<name>.yaml extends it). So a
wrong type or an unknown key fails at composition, naming the key; a bad value fails when `typed` builds the
objects, before any model is loaded; and the library receives these objects, never an untyped dict.

    from nirvana.config import typed          # registers the schemas
    cfg = typed(compose(config_name="run"))   # → RunConfig
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .allocation.gamma import OFFICIAL_GAMMA
from .calibration.config import CalibrationConfig
from .deploy.config import DeployConfig, ExportSettings
from .evaluation.config import EvalConfig
from .loggers import LoggerConfig
from .models import ModelConfig
from .pruners.config import SCHEMAS, PrunerConfig
from .quantization import QuantSpec
from .recovery.config import RecoveryConfig
from .schema import later

SCORE_CACHE = "${oc.env:NIRVANA_CACHE,.cache/nirvana}/scores"  # unit scores and plan KLs, beside the built assets
PARTIAL_DIR = "${oc.env:NIRVANA_CACHE,.cache/nirvana}/partial"  # finished evaluation pieces of unfinished runs


@dataclass
class Requirements:
    """What an experiment needs, checked before anything is loaded."""

    gpu: bool = False
    hub: bool = False


@dataclass
class RunJob:
    """Bookkeeping of `experiments.run`: never part of the run id (it changes where numbers go, not what they are)."""

    results_file: str = "results/rows/runs.jsonl"  # every run's rows are appended here, in one batch when it ends
    done_in: list[str] = field(default_factory=list)  # other rows files whose finished runs count as done too
    force: bool = False  # recompute a run whose id already has rows in results_file
    preflight: bool = False  # only check the config and requirements (GPU, hub), then exit
    progress: bool = True  # tqdm bars
    save_checkpoint: bool = False  # also save the pruned model (HF folder + plan) in the run folder
    score_cache: str | None = SCORE_CACHE  # unit scores per (model, scorer, calibration); null: off
    # finished evaluation pieces (a perplexity column, the zero-shot suite) of a run not finished yet, so a killed
    # run resumes there (nirvana.evaluation.pieces); removed when its rows are recorded; null: off
    partial_dir: str | None = PARTIAL_DIR
    requires: Requirements = field(default_factory=Requirements)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")


@dataclass
class RunConfig:
    """One experiment run (conf/run.yaml): prune, (recover,) (quantize,) evaluate, append rows."""

    model: ModelConfig = MISSING
    pruner: Any = MISSING  # a PrunerConfig subclass, by conf/pruner/<name>.yaml's schema
    calibration: CalibrationConfig = MISSING
    eval: EvalConfig = MISSING
    # after pruning: conf/recovery (LoRA fine-tuning, merged); then conf/quant (torchao). A run without them hashes
    # as the published runs did, before these stages existed: without the keys.
    recovery: RecoveryConfig | None = later(None)
    quant: QuantSpec | None = later(None)
    deploy: DeployConfig | None = later(None)  # conf/deploy: evaluated as llama.cpp runs a GGUF export
    sparsity: float = 0.2  # fraction of attention+MLP parameters removed (ignored by pruner=dense)
    gamma: Any = OFFICIAL_GAMMA  # γ of the pruners with NIRVANA's allocation; auto or a list: chosen by KL
    measure_kl: bool = True  # record kl/probe: the plan's KL to the dense model on the probe set
    allow_overlap: bool = False  # run even if calibration/probe items overlap evaluated ones (recorded in rows)
    job: RunJob = field(default_factory=RunJob)

    def __post_init__(self) -> None:
        _check_sparsity(self.sparsity)


@dataclass
class PruneJob:
    progress: bool = True
    score_cache: str | None = None  # a folder of cached unit scores; off for one-off pruning


@dataclass
class PruneConfig:
    """Prune one model and save its plan (conf/prune.yaml)."""

    model: ModelConfig = MISSING
    pruner: Any = MISSING
    calibration: CalibrationConfig = MISSING
    sparsity: float = 0.2
    gamma: Any = OFFICIAL_GAMMA
    measure_kl: bool = False
    save_dir: str | None = None  # pruned checkpoint folder (HF-loadable); null: only the plan, in the run folder
    overwrite: bool = False  # replace an existing non-empty save_dir
    job: PruneJob = field(default_factory=PruneJob)

    def __post_init__(self) -> None:
        _check_sparsity(self.sparsity)


@dataclass
class EvaluateJob:
    results_file: str = "results/rows/evaluate.jsonl"  # rows appended in one batch when the run ends
    force: bool = False  # recompute a run whose id already has rows in results_file (else: skipped before loading)
    progress: bool = True


@dataclass
class EvaluateConfig:
    """Evaluate one checkpoint (conf/evaluate.yaml): `model.path` names the folder."""

    model: ModelConfig = MISSING
    eval: EvalConfig = MISSING
    allow_overlap: bool = False
    job: EvaluateJob = field(default_factory=EvaluateJob)


@dataclass
class RecoverJob(EvaluateJob):
    results_file: str = "results/rows/recovery.jsonl"  # before/after rows, in one batch when the run ends
    work_dir: str | None = None  # default outputs/recover/<run id>: rerunning resumes training there
    save_dir: str | None = None  # the merged checkpoint (default: <work_dir>/checkpoint)
    overwrite: bool = False
    save_every: int = 200  # trainer checkpoints every N steps (resumable)
    keep_last: int = 2


@dataclass
class RecoverConfig(EvaluateConfig):
    """LoRA recovery of one checkpoint (conf/recover.yaml), evaluated before and after with `eval`."""

    recovery: RecoveryConfig = MISSING
    job: RecoverJob = field(default_factory=RecoverJob)


@dataclass
class QuantizeConfig:
    """Quantize one checkpoint and save the quantized weights (conf/quantize.yaml)."""

    model: ModelConfig = MISSING
    quant: QuantSpec = MISSING
    calibration: CalibrationConfig = MISSING  # w8a8_smoothquant's activation ranges
    save_dir: str | None = None


@dataclass
class ExportConfig(ExportSettings):
    """Export one model as a GGUF (conf/export.yaml): `model.path` names a checkpoint folder."""

    model: ModelConfig = MISSING


def register() -> None:
    """Put every schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for name, node in (("run_schema", RunConfig), ("prune_schema", PruneConfig), ("evaluate_schema", EvaluateConfig),
                       ("recover_schema", RecoverConfig), ("quantize_schema", QuantizeConfig),
                       ("export_schema", ExportConfig)):
        cs.store(name=name, node=node)
    for name, node in SCHEMAS.items():
        cs.store(group="pruner", name=f"{name}_schema", node=node)


def typed(cfg: DictConfig) -> Any:
    """The composed config as its dataclasses (resolving interpolations and running every value check)."""
    obj = OmegaConf.to_object(cfg)
    pruner = getattr(obj, "pruner", None)
    if pruner is not None and not isinstance(pruner, PrunerConfig):
        raise TypeError(f"pruner config {pruner!r} has no schema: conf/pruner/<name>.yaml must extend <name>_schema")
    return obj


register()
