"""Evaluation with one protocol for every model, dense or pruned (docs/protocol.md).

- `evaluate_perplexity`: our own implementation of the official protocol (joined texts, non-overlapping windows);
- `evaluate_zeroshot`: stock lm-eval on an in-memory model, one official metric per task;
- `measure_speed` / `compare_speed` / `flop_ratios`: prefill and decode throughput against the FLOP ratio.

Each returns a plain dataclass; `experiments.evaluate` turns them into result rows (`nirvana.results`).
"""

from .perplexity import PerplexityResult, evaluate_perplexity, load_texts
from .speed import SpeedResult, compare_speed, flop_ratios, flops_per_token, measure_speed
from .zeroshot import TASK_METRICS, TASKS, ZeroShotResult, evaluate_zeroshot

__all__ = [
    "PerplexityResult", "evaluate_perplexity", "load_texts",
    "SpeedResult", "compare_speed", "flop_ratios", "flops_per_token", "measure_speed",
    "TASK_METRICS", "TASKS", "ZeroShotResult", "evaluate_zeroshot",
]
