"""What a run's calibration is, typed: the schema of conf/calibration/*.yaml (registered with Hydra by
nirvana.config), with every default stated once, here, and every value checked when the config is built.

How each field counts in a run id: nirvana.schema (`later`: hashed only when set away from its default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from omegaconf import MISSING

from ..schema import at_least, later, one_of
from .sources import SOURCES

SELECTIONS = ("none", "kl", "kl_per_sample")
REFERENCE_PRECISIONS = ("float32", "float16")  # nirvana.probe.reference


@dataclass
class ProbeConfig:
    """The fixed KL probe: consecutive windows of held-out text (official measurement: 128 × 64 tokens)."""

    n_samples: int = 128  # windows of seq_len tokens
    seq_len: int = 64
    documents: int = 200  # sources without a registered probe set: their last N documents (never drawn)
    batch_size: int = 16  # probe windows per forward
    # the dense side of every KL, kept in the score cache (nirvana.probe.reference): float32 (exact, the numbers
    # computed without it) | float16 (half the disk; KLs move by a documented, tested amount: hashed in run ids)
    reference: str = later("float32")

    def __post_init__(self) -> None:
        if self.n_samples < 1 or self.seq_len < 2:
            raise ValueError(f"calibration.probe needs n_samples ≥ 1 and seq_len ≥ 2, got {self.n_samples} and "
                             f"{self.seq_len}")
        at_least("calibration.probe.documents", self.documents, 1)
        at_least("calibration.probe.batch_size", self.batch_size, 1)
        one_of("calibration.probe.reference", self.reference, REFERENCE_PRECISIONS)


@dataclass
class CalibrationConfig:
    """Where calibration windows come from and how a batch is chosen (docs/method.md §3)."""

    source: str = MISSING  # a text source (nirvana.calibration.sources.SOURCES) or `tensor`
    n_samples: int = 32  # the official 32 × 128 tokens
    seq_len: int = 128
    seed: int = 0  # the official sampler's Python `random` seed
    join: int = 1  # join this many consecutive passages into one document before sampling
    path: str | None = None  # text_file: a .jsonl/.txt file; tensor: a saved LongTensor [n_samples, seq_len]
    field: str = "text"  # the text field of a .jsonl file or hub dataset (this name is why `dataclasses.field` is spelled out)
    selection: str = "none"  # none | kl (the lowest-KL candidate set) | kl_per_sample (the best single windows)
    candidates: int = 8  # KL selection: seeds seed, seed+1, …, seed+K-1 of `source` …
    candidate_sources: list[str] | None = None  # … or one set per listed source, at `seed`
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    hf_name: str | None = later(None)  # source=hf: the dataset, its config and split
    hf_config: str | None = later(None)
    split: str = later("train")

    def __post_init__(self) -> None:
        if isinstance(self.probe, dict):  # built by hand from plain values
            self.probe = ProbeConfig(**self.probe)
        for name in [self.source, *(self.candidate_sources or [])]:
            if name not in SOURCES:
                raise ValueError(f"unknown calibration source {name!r}; choose one of {sorted(SOURCES)}")
        if self.selection not in SELECTIONS:  # (the wording tests and users grep for: "unknown calibration …")
            raise ValueError(f"unknown calibration selection {self.selection!r}; choose one of {SELECTIONS}")
        if self.n_samples < 1 or self.seq_len < 1:
            raise ValueError(f"calibration needs n_samples ≥ 1 and seq_len ≥ 1, got {self.n_samples} and "
                             f"{self.seq_len}")
        at_least("calibration.join", self.join, 1)
        at_least("calibration.candidates", self.candidates, 1)
        if self.selection != "none" and "tensor" in [self.source, *(self.candidate_sources or [])]:
            raise ValueError("KL selection draws candidates from text; a saved tensor has nothing to choose from")
        if self.source in ("tensor", "text_file") and not self.path:
            raise ValueError(f"calibration source {self.source!r} needs calibration.path")
        if self.source == "hf" and not self.hf_name:
            raise ValueError("calibration source 'hf' needs calibration.hf_name (and optionally hf_config, split, "
                             "field)")

    @classmethod
    def from_record(cls, record: dict | None) -> CalibrationConfig | None:
        """The calibration a saved plan records (`plan.extra["calibration"]`; None: a method that read none)."""
        if not record:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})

    @property
    def hub(self) -> dict:
        """The hub dataset's coordinates (source=hf), as the text loaders take them."""
        return {"hf_name": self.hf_name, "hf_config": self.hf_config, "split": self.split}

    @property
    def sources(self) -> list[str]:
        """The sources candidates are drawn from; the first one's probe is the run's probe."""
        return list(self.candidate_sources or [self.source])
