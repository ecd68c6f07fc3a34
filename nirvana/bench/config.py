"""The typed schema of `make bench` (conf/bench.yaml extends `bench_schema`): every section's settings, their types
and defaults. A wrong type or an unknown key fails when Hydra composes the config; a bad value when `typed` builds
these objects; what needs the built data or the machine (task names, the llama.cpp runtime) is checked by
nirvana.bench.sections for the chosen sections only, still before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from ..config import SCORE_CACHE
from ..schema import at_least
from .models import check_model_spec
from .scoring import check_variants

SECTIONS = ("scoring", "statistics", "kl", "kl_fitness", "speed", "llamacpp", "quant", "zeroshot", "exactness", "demo")
NINE_TASKS = ["arc_easy", "arc_challenge", "boolq", "hellaswag", "lambada_openai", "openbookqa", "piqa", "sciq",
              "winogrande"]


@dataclass
class BenchCalibration:
    """The calibration batch a section prunes with: build_calibration's arguments, with its defaults (a section's
    default is the official batch, `_official`)."""

    source: str = "lambada_tail"
    n_samples: int = 32
    seq_len: int = 128
    seed: int = 0
    join: int = 1


def _official(seed: int = 12) -> BenchCalibration:
    """The offline LAMBADA tail, passages joined in 4s, 32 × 128 tokens, the official seed."""
    return BenchCalibration(seed=seed, join=4)


@dataclass
class BenchProbe:
    """The KL probe a section rates plans on (nirvana.calibration.config.ProbeConfig's fields)."""

    n_samples: int = 32  # the first 32 of the 128 × 64 probe windows
    seq_len: int = 64
    documents: int = 200
    batch_size: int = 16


@dataclass
class GenerationShape:
    batch_size: int = 1
    prompt_len: int = 128
    new_tokens: int = 32

    def __post_init__(self) -> None:
        for key in ("batch_size", "prompt_len", "new_tokens"):
            at_least(f"shape.{key}", getattr(self, key), 1)


@dataclass
class PromptShape:
    """One sequence (llama-cpp-python runs one at a time)."""

    prompt_len: int = 128
    new_tokens: int = 32


@dataclass
class ScoringModel:
    """A model of the scoring section (nirvana/bench/models.py) and its random calibration batch shape; the optional
    keys override the section's: dtype, variants, repeats, memory_budget_gib (auto's cap on the process's peak),
    reference_dtype (adds the `reference` variant: the same weights upcast and re-scored once)."""

    name: str = "smollm2"
    batch: int = 32
    seq_len: int = 128
    dtype: str | None = None
    variants: list[str] | None = None
    repeats: int | None = None
    memory_budget_gib: float | None = None
    reference_dtype: str | None = None

    def __post_init__(self) -> None:
        check_model_spec(self.name)
        at_least("scoring.models.batch", self.batch, 1)
        at_least("scoring.models.seq_len", self.seq_len, 2)
        at_least("scoring.models.repeats", self.repeats, 1)
        check_variants(self.variants or [])

    def options(self) -> dict:
        """The keys this model sets (its overrides of the section's settings)."""
        return {k: v for k, v in vars(self).items() if k != "name" and v is not None}


def _scoring_models() -> list[ScoringModel]:
    return [
        ScoringModel("smollm2", 32, 128),  # the official 32 × 128 calibration batch
        ScoringModel("llama-1b-shape", 4, 128),  # random-init Llama-3.2-1B shape; 4 rows keep naive in RAM
        ScoringModel("qwen2.5-coder", 8, 128, variants=["naive", "ours", "auto"]),  # a 151,936-token output
        # The scale proof: Llama-3.2-3B shape in bf16 under a 12 GiB budget (naive needs ~15 GiB); bf16 rounding
        # alone moves units across the threshold, so a float32 re-scoring of the same weights arbitrates
        ScoringModel("llama-3b-shape", 4, 128, dtype="bfloat16", variants=["naive", "auto"], repeats=1,
                     memory_budget_gib=12, reference_dtype="float32"),
    ]


@dataclass
class ScoringBench:
    """NIRVANA scoring: ours vs the naive full-gradient scorer (nirvana/bench/scoring.py)."""

    variants: list[str] = field(default_factory=lambda: ["naive", "ours", "ours+checkpointing", "ours+micro_batch",
                                                         "auto"])
    repeats: int = 3
    device: str = "cpu"
    dtype: str = "float32"
    models: list[ScoringModel] = field(default_factory=_scoring_models)

    def __post_init__(self) -> None:
        check_variants(self.variants)
        at_least("scoring.repeats", self.repeats, 1)


@dataclass
class StatisticsBench:
    """Wanda-sp / FLAP statistics pass: layer-wise vs whole-model forwards (nirvana/bench/statistics.py)."""

    repeats: int = 3

    def __post_init__(self) -> None:
        at_least("statistics.repeats", self.repeats, 1)


def _check_pruned(section: str, sparsities: list[float], repeats: int, low: float = 0.0) -> None:
    at_least(f"{section}.repeats", repeats, 1)
    bad = [s for s in sparsities if not low <= float(s) < 1.0]
    if bad or not sparsities:
        raise ValueError(f"{section}.sparsities must be a non-empty list in [{low:g}, 1), got {sparsities}")


@dataclass
class KLBench:
    """KL selection's probe forwards: plans as cut copies vs masks (nirvana/bench/kl.py)."""

    model: str = "builtin:smollm2-135m-instruct"
    sparsities: list[float] = field(default_factory=lambda: [0.2, 0.5])
    repeats: int = 3
    probe: BenchProbe = field(default_factory=BenchProbe)
    calibration: BenchCalibration = field(default_factory=lambda: _official(seed=14))
    score_cache: str | None = SCORE_CACHE

    def __post_init__(self) -> None:
        _check_pruned("kl", self.sparsities, self.repeats, low=1e-9)


@dataclass
class KLFitnessBench:
    """Choosing (draw, γ) by KL: old (dense recomputed, full γ grid) vs new (shared reference, coarse to fine)
    (nirvana/bench/kl_fitness.py)."""

    model: str = "builtin:smollm2-135m-instruct"
    sparsities: list[float] = field(default_factory=lambda: [0.4])
    draws: int = 4  # calibration draws seed, seed+1, … (recipe=nirvana_auto rates 8)
    repeats: int = 3
    probe: BenchProbe = field(default_factory=BenchProbe)
    calibration: BenchCalibration = field(default_factory=_official)
    score_cache: str | None = SCORE_CACHE

    def __post_init__(self) -> None:
        _check_pruned("kl_fitness", self.sparsities, self.repeats, low=1e-9)
        at_least("kl_fitness.draws", self.draws, 1)


@dataclass
class SpeedBench:
    """NIRVANA-pruned vs dense throughput (nirvana/bench/speed.py)."""

    model: str = "builtin:smollm2-135m-instruct"
    sparsities: list[float] = field(default_factory=lambda: [0.2, 0.5])
    gamma: float = 3.36
    repeats: int = 5
    shapes: list[GenerationShape] = field(default_factory=lambda: [GenerationShape(1), GenerationShape(8)])
    calibration: BenchCalibration = field(default_factory=_official)
    score_cache: str | None = SCORE_CACHE

    def __post_init__(self) -> None:
        _check_pruned("speed", self.sparsities, self.repeats)


@dataclass
class LlamaCppBench:
    """llama.cpp (the extra: make setup-llamacpp): NIRVANA-pruned vs dense GGUFs (nirvana/bench/llamacpp.py)."""

    model: str = "builtin:smollm2-135m-instruct"
    sparsities: list[float] = field(default_factory=lambda: [0.2, 0.5])
    gamma: float = 3.36
    types: list[str] = field(default_factory=lambda: ["f32", "q8_0", "q4_k_m"])
    threads: list[int] = field(default_factory=lambda: [1, 2])
    repeats: int = 5
    shape: PromptShape = field(default_factory=PromptShape)
    calibration: BenchCalibration = field(default_factory=_official)
    score_cache: str | None = SCORE_CACHE

    def __post_init__(self) -> None:
        from ..deploy import check_gguf_type

        _check_pruned("llamacpp", self.sparsities, self.repeats)
        for t in self.types:
            check_gguf_type(t)
        if not self.threads:
            raise ValueError("llamacpp.threads must list at least one thread count")
        for n in self.threads:
            at_least("llamacpp.threads", n, 1)


@dataclass
class QuantBench:
    """Each quantization scheme vs the float model: size and CPU speed (nirvana/bench/quant.py)."""

    model: str = "builtin:smollm2-135m-instruct"
    sparsities: list[float] = field(default_factory=lambda: [0.0, 0.4])  # 0: the dense model
    gamma: float = 3.36
    schemes: list[str] = field(default_factory=lambda: ["int8_wo", "w8a8", "w8a8_smoothquant", "int4_wo"])
    repeats: int = 3
    shapes: list[GenerationShape] = field(default_factory=lambda: [GenerationShape(1)])
    calibration: BenchCalibration = field(default_factory=_official)
    score_cache: str | None = SCORE_CACHE

    def __post_init__(self) -> None:
        from ..quantization import QuantSpec

        _check_pruned("quant", self.sparsities, self.repeats)
        for scheme in self.schemes:
            QuantSpec(scheme=scheme)  # a bad scheme fails here


@dataclass
class ZeroshotBench:
    """lm-eval model classes: hf-shared-prefix (ours) vs hf (stock) (nirvana/bench/zeroshot.py)."""

    model_dir: str | None = None  # the folder both load; null: the offline SmolLM2 asset
    tasks: list[str] = field(default_factory=lambda: list(NINE_TASKS))
    limit: int = 40  # items per task (the nine-task mix: ~1,200 requests)
    batch_size: int = 8  # hf: requests per forward; ours: packed rows per forward
    max_length: int = 2048
    repeats: int = 3

    def __post_init__(self) -> None:
        at_least("zeroshot.limit", self.limit, 1)
        at_least("zeroshot.repeats", self.repeats, 1)


@dataclass
class ExactnessBench:
    """hf-shared-prefix vs hf item by item, dense and NIRVANA-pruned (nirvana/bench/zeroshot.py)."""

    model_dir: str | None = None  # null: the offline SmolLM2 asset
    tasks: list[str] = field(default_factory=lambda: list(NINE_TASKS))
    limit: int = 200  # items per task (~5,400 requests per model and class)
    sparsity: float = 0.3  # the pruned copy: NIRVANA at this sparsity
    tolerance: float = 1.0e-4  # requests whose two log-likelihoods differ by more are re-scored in float64
    max_length: int = 2048

    def __post_init__(self) -> None:
        at_least("exactness.limit", self.limit, 1)


@dataclass
class DemoBench:
    """Wall time of the `make demo` job, cold score cache (nirvana/bench/demo.py)."""

    args: list[str] = field(default_factory=list)  # extra overrides for experiments.run (tests shrink the demo)


@dataclass
class BenchConfig:
    """`make bench` (conf/bench.yaml): which sections run, where their JSON documents go, and each one's settings."""

    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    out_dir: str = "results/bench"
    progress: bool = True
    scoring: ScoringBench = field(default_factory=ScoringBench)
    statistics: StatisticsBench = field(default_factory=StatisticsBench)
    kl: KLBench = field(default_factory=KLBench)
    kl_fitness: KLFitnessBench = field(default_factory=KLFitnessBench)
    speed: SpeedBench = field(default_factory=SpeedBench)
    llamacpp: LlamaCppBench = field(default_factory=LlamaCppBench)
    quant: QuantBench = field(default_factory=QuantBench)
    zeroshot: ZeroshotBench = field(default_factory=ZeroshotBench)
    exactness: ExactnessBench = field(default_factory=ExactnessBench)
    demo: DemoBench = field(default_factory=DemoBench)

    def __post_init__(self) -> None:
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown bench section(s) {unknown}; choose from {list(SECTIONS)}")


ConfigStore.instance().store(name="bench_schema", node=BenchConfig)
