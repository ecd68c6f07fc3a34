"""The evaluation protocol, typed: the schema of conf/eval/*.yaml and its stage groups (registered with Hydra by
nirvana.config). Every default is stated once, here; names and ranges are checked when the config is built, before
any model or dataset is loaded (`protocol.check_data` then checks that the named data exist).
How each field counts in a run id: nirvana.schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ..schema import at_least, later
from .zeroshot import LMS, SOFTMAX_DTYPES, SUITES, TASK_METRICS


def _at_least(key: str, value, low: int) -> None:
    at_least(f"eval.{key}", value, low)


@dataclass
class PerplexityConfig:
    """exp(mean token NLL) over non-overlapping windows of each set's joined texts (docs/protocol.md)."""

    datasets: list[str] = field(default_factory=lambda: ["wiki_passages", "lambada_head"])  # offline sets or files
    seq_len: list[int] = field(default_factory=lambda: [128, 512])  # one number per window length
    batch_size: int = 4
    max_texts: int | None = None  # the first N texts of each set (null: all)
    max_windows: int | None = None  # the first N windows (null: all)
    max_tokens: int | None = None  # the first N tokens of each set's stream (null: all)

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("eval.perplexity.datasets is empty: name at least one set")
        for s in self.seq_len:
            _at_least("perplexity.seq_len", s, 2)
        for key in ("batch_size", "max_texts", "max_windows", "max_tokens"):
            _at_least(f"perplexity.{key}", getattr(self, key), 1)


NINE_TASKS = ["arc_easy", "arc_challenge", "boolq", "hellaswag", "lambada_openai", "openbookqa", "piqa", "sciq",
              "winogrande"]


@dataclass
class ZeroshotConfig:
    """lm-eval tasks, 0-shot, each scored by the official code's metric (nirvana.evaluation.zeroshot)."""

    tasks: list[str] = field(default_factory=lambda: list(NINE_TASKS))
    suite: str = "local"  # local: lm-eval's own task YAMLs on the built data | hub: lm-eval's stock tasks
    lm: str = "hf-shared-prefix"  # our lm-eval class (same answers, faster) | hf: lm-eval's own HFLM
    batch_size: int = 8
    max_length: Any = "${model.max_length}"  # lm-eval's context cap: the model's
    # the dtype lm-eval sums log-probabilities in (null: lm-eval's default, the model's own dtype)
    softmax_dtype: str | None = later("float32")
    bootstrap_iters: int = 100000  # lm-eval's stderr bootstrap

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"eval.zeroshot.suite={self.suite!r}: choose one of {SUITES}")
        unknown = [t for t in self.tasks if t not in TASK_METRICS]
        if not self.tasks:
            raise ValueError("eval.zeroshot.tasks is empty: name at least one task")
        if unknown:
            raise ValueError(f"eval.zeroshot.tasks: unknown zero-shot task(s) {unknown}; choose from "
                             f"{list(TASK_METRICS)}")
        if self.lm not in LMS:
            raise ValueError(f"eval.zeroshot.lm={self.lm!r}: choose one of {LMS}")
        if self.softmax_dtype not in SOFTMAX_DTYPES:
            raise ValueError(f"eval.zeroshot.softmax_dtype={self.softmax_dtype!r}: choose float32, float64 or null "
                             "(null: lm-eval's default, the model's own dtype)")
        _at_least("zeroshot.batch_size", self.batch_size, 1)


@dataclass
class SpeedConfig:
    """Prefill and KV-cached decode throughput, with the FLOP ratio to compare it with (nirvana.evaluation.speed)."""

    batch_size: int = 1
    prompt_len: int = 128
    new_tokens: int = 32
    repeats: int = 5  # timed passes; the median is reported
    warmup: int = 1
    compare_dense: bool = True  # a pruned model: measure its dense twin in the same run, alternating

    def __post_init__(self) -> None:
        for key in ("batch_size", "prompt_len", "new_tokens", "repeats"):
            _at_least(f"speed.{key}", getattr(self, key), 1)
        _at_least("speed.warmup", self.warmup, 0)


@dataclass
class EvalConfig:
    """Which stages run and on how much data; conf/eval/<name>.yaml composes the stage groups."""

    name: str = MISSING
    limit: Any = None  # zero-shot items per task, or a fraction of each task below 1 (null: all)
    perplexity: PerplexityConfig | None = None
    zeroshot: ZeroshotConfig | None = None
    speed: SpeedConfig | None = None

    def __post_init__(self) -> None:
        if not (self.perplexity or self.zeroshot or self.speed):
            raise ValueError(f"eval={self.name} enables no stage: set at least one of perplexity, zeroshot, speed")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int | float)
                                       or not self.limit > 0):
            raise ValueError(f"eval.limit must be > 0 or null, got {self.limit}")
