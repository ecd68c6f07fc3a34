"""LoRA recovery, typed: the schema of conf/recovery/*.yaml (registered with Hydra by nirvana.config). The training
settings are nirvana.recovery.lora.LoraSettings (the official ones by default); a recovery config adds its name and
its data."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from .data import ALPACA_DATASET, LOCAL_INSTRUCTION
from .lora import LoraSettings


@dataclass
class RecoveryDataConfig:
    """Instruction examples: `alpaca` (the hub, the official data) or `local` (an offline stand-in built from
    registered text sets, nirvana.recovery.data)."""

    source: str = "alpaca"
    dataset: str = ALPACA_DATASET  # source=alpaca: the hub dataset
    max_examples: int | None = None
    files: list[str] = field(default_factory=lambda: ["lambada_tail"])  # source=local: registered text sets
    instruction: str = LOCAL_INSTRUCTION  # source=local: every example's instruction
    input_fraction: float = 0.5  # source=local: share of each passage given as input; the rest is the response

    def __post_init__(self) -> None:
        if self.source not in ("alpaca", "local"):
            raise ValueError(f"recovery.data.source={self.source!r}: choose alpaca (hub) or local (offline stand-in)")
        if not 0 < self.input_fraction < 1:
            raise ValueError(f"recovery.data.input_fraction must lie in (0, 1), got {self.input_fraction}")


@dataclass
class RecoveryConfig(LoraSettings):
    name: str = MISSING  # what tables call a recovered model (`flap [lora_offline]`)
    target_modules: list[str] | None = None  # null: every attention and MLP projection, as the adapter names them
    data: RecoveryDataConfig = field(default_factory=RecoveryDataConfig)

    def settings(self) -> LoraSettings:
        """The training settings alone."""
        return LoraSettings(**{k: getattr(self, k) for k in LoraSettings.__dataclass_fields__})
