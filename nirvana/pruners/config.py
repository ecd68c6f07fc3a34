"""Each pruning method's options, typed: the schemas of conf/pruner/*.yaml (registered with Hydra by nirvana.config).
Every default is stated once, here; every value is checked when the config is built, before any model is loaded.
How each field counts in a run id: nirvana.schema (`unhashed`: never; `later`: only when set away from its default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from ..allocation import (
    ALLOCATORS,
    ARITHMETIC_EXACT,
    ARITHMETIC_OFFICIAL,
    RATIO_LITERAL,
    RATIO_MATCHED,
    ROUND_TO,
    SPARE_BEST_SCORE,
    SPARE_HIGHEST_INDEX,
    SPARE_RULES,
)
from ..allocation.gamma import GAMMA_SEARCHES, OFFICIAL_GAMMA, gamma_candidates
from ..allocation.search import SearchConfig
from ..schema import at_least, later, one_of, unhashed
from ..scoring.schedule import DEFAULT_TIME_TOLERANCE, SCHEDULES


def _choice(key: str, value, choices) -> None:
    one_of(f"pruner.{key}", value, choices)


SEARCH = "search"  # allocator: the searched allocation (conf/allocation/search.yaml; nirvana.allocation.search)
# Why Wanda-sp's scores cannot drive a searched allocation faithfully (its config and its pruner refuse it).
WANDA_SP_NOT_SEARCHABLE = (
    "Wanda-sp scores each layer on inputs that depend on how every earlier layer was pruned (its sequential pass), "
    "so a searched allocation would need a new statistics pass per candidate; pruner=flap (statistics of the "
    "unpruned model, bias compensation recomputed per candidate) and the score-then-allocate methods can be searched")


def _search(config) -> None:
    """`allocator: search` takes its settings from `search` (null: the defaults), which nothing else reads."""
    if config.search is not None and config.allocator != SEARCH:
        raise ValueError(f"pruner.search configures allocator=search; pruner.allocator is {config.allocator!r}")


def _at_least(key: str, value, low: int) -> None:
    at_least(f"pruner.{key}", value, low)


@dataclass
class PrunerConfig:
    """What every method has: its registry name (nirvana.pruners.PRUNERS) and an optional variant name that keeps
    a named setting's rows apart (`wanda_sp:matched`, `nirvana:kl`)."""

    name: str = "dense"
    variant: str | None = later(None)

    prunes: ClassVar[bool] = True  # False: the dense reference (nothing is pruned, no recipe)

    def options(self) -> dict[str, Any]:
        """The method's own options, as nirvana.pruners takes them (keyword arguments)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("name", "variant")}


@dataclass
class DenseConfig(PrunerConfig):
    """No pruning: the dense reference row of every table."""

    prunes: ClassVar[bool] = False


@dataclass
class GlobalAllocation:
    """NIRVANA's allocation: a closed-form budget split by γ, one threshold per module type across layers."""

    allocator: str = "global"  # global | uniform (the same fractions in every layer, an ablation) | search
    gamma: Any = OFFICIAL_GAMMA  # MLP pruned fraction = γ × attention's; auto or a list: chosen by KL (conf: ${gamma})
    round_to: int = ROUND_TO  # kept MLP width rounded up to a multiple of this
    spare_rule: str = SPARE_HIGHEST_INDEX  # a fully pruned layer keeps its highest-index group (official) | best_score
    arithmetic: str = ARITHMETIC_OFFICIAL  # the closed form in the official float order | exact (rational)
    # γ=auto or a list: rate every candidate (grid) | coarse to fine (nirvana.allocation.gamma.rate_gammas)
    gamma_search: str = later("grid")
    # allocator=search: an evolutionary search from the global allocation (conf/allocation/search.yaml)
    search: SearchConfig | None = later(None)

    def check_allocation(self) -> None:
        _choice("allocator", self.allocator, (*ALLOCATORS, SEARCH))
        _search(self)
        _choice("gamma_search", self.gamma_search, GAMMA_SEARCHES)
        gamma_candidates(self.gamma)  # a number > 0, a non-empty list of them, or auto
        _at_least("round_to", self.round_to, 1)
        _choice("spare_rule", self.spare_rule, SPARE_RULES)
        _choice("arithmetic", self.arithmetic, (ARITHMETIC_OFFICIAL, ARITHMETIC_EXACT))


@dataclass
class GradientSchedule:
    """How a gradient scorer runs its batch: the same criterion, memory traded for time (nirvana.scoring)."""

    schedule: str = unhashed("auto")  # pick micro-batching/checkpointing to fit memory | manual: as set
    memory_budget_gib: float | None = unhashed(None)  # cap on the scoring pass's peak (null: what is free)
    time_tolerance: float = unhashed(DEFAULT_TIME_TOLERANCE)  # auto: least memory among schedules this close
    micro_batch_size: int | None = None  # rows per forward/backward (set: wins over auto); gradients summed exactly
    checkpointing: bool = False  # recompute each block in backward instead of storing its activations

    def check_schedule(self) -> None:
        _choice("schedule", self.schedule, SCHEDULES)
        _at_least("micro_batch_size", self.micro_batch_size, 1)
        if self.memory_budget_gib is not None and not self.memory_budget_gib > 0:
            raise ValueError(f"pruner.memory_budget_gib must be > 0 or null, got {self.memory_budget_gib}")
        if not self.time_tolerance >= 0:
            raise ValueError(f"pruner.time_tolerance must be ≥ 0, got {self.time_tolerance}")


@dataclass
class NirvanaConfig(PrunerConfig, GlobalAllocation, GradientSchedule):
    """NIRVANA: output-gradient saliency |∂f/∂W ⊙ W| (docs/method.md §1), the global γ allocation (§2)."""

    name: str = "nirvana"
    include_bias: bool = False  # score q/k/v biases too (Qwen2); the official criterion scores weights only
    bias_compensation: bool = later(False)  # removed channels' calibration mean becomes an output bias (FLAP's)
    gamma_sparsity_slack: float | None = later(None)  # γ=auto: only γ removing ≥ sparsity − slack may win
    vocab_chunk: int | None = 8192  # LM-head rows per chunk of the output target (null: the full [B,T,V] logits)

    def __post_init__(self) -> None:
        self.check_allocation()
        self.check_schedule()
        _at_least("vocab_chunk", self.vocab_chunk, 1)
        slack = self.gamma_sparsity_slack
        if slack is not None and (isinstance(slack, bool) or not 0 <= slack < 1):
            raise ValueError(f"pruner.gamma_sparsity_slack must be null or a number in [0, 1), got {slack!r}")


@dataclass
class MagnitudeConfig(PrunerConfig, GlobalAllocation):
    """S = |W| with NIRVANA's aggregation and allocation (the official code's `magnitude` variant)."""

    name: str = "magnitude"
    include_bias: bool = False

    def __post_init__(self) -> None:
        self.check_allocation()


@dataclass
class RandomConfig(PrunerConfig, GlobalAllocation):
    """Seeded uniform unit scores with NIRVANA's allocation: the floor every criterion must beat."""

    name: str = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        self.check_allocation()


@dataclass
class UniformAllocation:
    """A uniform ratio in every layer of a range (LLM-Pruner's allocation)."""

    allocator: str = "uniform"
    gamma: Any = 1.0  # the same pruned fraction of heads and neurons, as LLM-Pruner
    layer_start: int = 4  # LLM-Pruner's Llama default: layers [4, 30) of 32 pruned, the rest intact
    layer_end: int | None = -2
    ratio: str = RATIO_MATCHED  # matched: remove `sparsity` of all attn+MLP params | literal: per-layer unit ratio
    round_to: int = 1  # LLM-Pruner does not round widths
    spare_rule: str = SPARE_BEST_SCORE
    search: SearchConfig | None = later(None)  # allocator=search: from the global allocation at γ


@dataclass
class TaylorConfig(PrunerConfig, UniformAllocation, GradientSchedule):
    """LLM-Pruner's first-order Taylor: |∂L/∂W ⊙ W| with L the LM loss; uniform ratio inside a layer range."""

    name: str = "taylor"
    arithmetic: str = ARITHMETIC_OFFICIAL  # used only with allocator=global
    include_bias: bool = False
    bias_compensation: bool = later(False)

    def __post_init__(self) -> None:
        _choice("allocator", self.allocator, (*ALLOCATORS, SEARCH))
        _search(self)
        gamma_candidates(self.gamma)
        _choice("ratio", self.ratio, (RATIO_MATCHED, RATIO_LITERAL))
        _at_least("round_to", self.round_to, 1)
        _choice("spare_rule", self.spare_rule, SPARE_RULES)
        self.check_schedule()


@dataclass
class WandaSpConfig(PrunerConfig):
    """Wanda-sp (the FLAP repository's structured Wanda): |W|·√(mean x²) per unit, uniform ratio, sequential."""

    name: str = "wanda_sp"
    gamma: float = 1.0  # the same ratio for attention groups and neurons, as the original
    ratio: str = RATIO_LITERAL  # the ratio counts units per layer (original) | matched: counts parameters
    layer_start: int = 0
    layer_end: int | None = None
    round_to: int = 1  # the original does not round widths; 8 for tensor-core-friendly shapes
    spare_rule: str = SPARE_BEST_SCORE
    batch_size: int = 8  # calibration rows per forward of the statistics pass
    allocator: str = later("uniform")  # its own; `search` is refused (pruners/layerwise.py says why)
    search: SearchConfig | None = later(None)

    def __post_init__(self) -> None:
        if self.allocator != "uniform":
            raise ValueError(f"pruner.allocator={self.allocator!r}: wanda_sp allocates a uniform ratio as part of the "
                             f"method. {WANDA_SP_NOT_SEARCHABLE}")
        _search(self)
        gamma_candidates(self.gamma)
        _choice("ratio", self.ratio, (RATIO_MATCHED, RATIO_LITERAL))
        _at_least("round_to", self.round_to, 1)
        _choice("spare_rule", self.spare_rule, SPARE_RULES)
        _at_least("batch_size", self.batch_size, 1)


@dataclass
class FlapConfig(PrunerConfig):
    """FLAP (WIFV metric, AL-AM structure) with bias compensation, as its repository's prune_flap. FLAP splits the
    removal between attention and MLP by its standardized scores: it reads no γ."""

    name: str = "flap"
    attention_weight: str = "official_int"  # a group weighs int(c_attn/c_neuron) neurons (official 170) | exact
    square_attention: bool = True  # the official code squares the o_proj metric again
    bias_compensation: bool = later(True, omit_if=False)
    round_to: int = 1
    spare_rule: str = SPARE_BEST_SCORE  # FLAP can empty a layer's attention; we keep its best group
    batch_size: int = 8
    # its own (one standardized pool over layers and modules) | search: from FLAP's plan, FLAP's metric ranking the
    # units of each layer, every candidate compensated (conf/allocation/search.yaml)
    allocator: str = later("standardized_global")
    search: SearchConfig | None = later(None)

    def __post_init__(self) -> None:
        _choice("allocator", self.allocator, ("standardized_global", SEARCH))
        _search(self)
        _choice("attention_weight", self.attention_weight, ("official_int", "exact"))
        _at_least("round_to", self.round_to, 1)
        _choice("spare_rule", self.spare_rule, SPARE_RULES)
        _at_least("batch_size", self.batch_size, 1)


# conf/pruner/<name>.yaml → its schema (nirvana.config registers each as `<name>_schema` in the pruner group)
SCHEMAS: dict[str, type[PrunerConfig]] = {
    "dense": DenseConfig, "nirvana": NirvanaConfig, "magnitude": MagnitudeConfig, "random": RandomConfig,
    "taylor": TaylorConfig, "wanda_sp": WandaSpConfig, "flap": FlapConfig}
