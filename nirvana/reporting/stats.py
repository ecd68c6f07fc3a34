"""Intervals from per-item results: seeded percentile bootstrap, plain and paired.

Why a bootstrap: the quantities compared are means of several tasks' accuracies (each task's items resampled
within the task, so every task keeps its size) and perplexities (exp of a ratio over windows), whose sampling
distributions have no simple closed form. Paired: two models scored on the same items are resampled with the
same indices, so the interval is that of their difference on those items — much narrower than comparing two
separate intervals, and the right question for "does method A beat method B on this benchmark?".

Everything is seeded (`seed`), so a report is reproducible to the digit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    value: float  # the statistic on the observed items
    lo: float
    hi: float

    def excludes(self, null: float = 0.0) -> bool:
        """Whether the interval leaves out `null` — 0 for a difference, 1 for a ratio."""
        return self.lo > null or self.hi < null

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.lo:.4f}, {self.hi:.4f}]"


def _percentiles(samples: np.ndarray, value: float, level: float) -> Interval:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return Interval(float(value), float(lo), float(hi))


def _task_indices(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    return rng.integers(0, n, size=(resamples, n))


def mean_of_tasks(items: Mapping[str, Sequence[float]], resamples: int = RESAMPLES, seed: int = 0,
                  level: float = LEVEL) -> Interval:
    """The unweighted mean over tasks of each task's mean item score, with a stratified bootstrap interval."""
    value, means = mean_of_tasks_replicates(items, resamples, seed)
    return _percentiles(means, value, level)


def mean_of_tasks_replicates(items: Mapping[str, Sequence[float]], resamples: int = RESAMPLES,
                             seed: int = 0) -> tuple[float, np.ndarray]:
    """`mean_of_tasks`'s statistic and its bootstrap replicates (each task's items resampled within the task)."""
    if not items:
        raise ValueError("no task items to average")
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    value = 0.0
    for task in sorted(items):
        x = np.asarray(items[task], dtype=float)
        if x.size == 0:
            raise ValueError(f"task {task} has no items")
        means += x[_task_indices(rng, x.size, resamples)].mean(axis=1)
        value += x.mean()
    return value / len(items), means / len(items)


def bootstrap_variance(items: Mapping[str, Sequence[float]]) -> float:
    """The variance of `mean_of_tasks`'s bootstrap distribution in closed form — what its replicates estimate,
    without their Monte-Carlo noise: a resampled mean of n items has variance var(x) / n (population variance),
    each task is resampled alone, and the tasks are averaged: Σ_t var(x_t) / n_t / K². The statistics here are
    means, so this is exact (tests compare it with the replicates' variance). For a paired difference pass the
    item-by-item differences (resampled with the same indices, the difference is the mean of differences); for a
    perplexity, one "task" of per-window log values (NLL / tokens)."""
    if not items:
        raise ValueError("no task items to average")
    total = 0.0
    for task in sorted(items):
        x = np.asarray(items[task], dtype=float)
        if x.size == 0:
            raise ValueError(f"task {task} has no items")
        total += x.var() / x.size
    return total / len(items) ** 2


def paired_difference(a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]],
                      resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> Interval:
    """mean_of_tasks(a) − mean_of_tasks(b) on the same items, resampled with the same indices for both."""
    if sorted(a) != sorted(b):
        raise ValueError(f"paired comparison needs the same tasks, got {sorted(a)} and {sorted(b)}")
    rng = np.random.default_rng(seed)
    diffs = np.zeros(resamples)
    value = 0.0
    for task in sorted(a):
        x, y = np.asarray(a[task], dtype=float), np.asarray(b[task], dtype=float)
        if x.size != y.size:
            raise ValueError(f"task {task}: {x.size} items against {y.size}; paired items must be the same")
        idx = _task_indices(rng, x.size, resamples)
        diffs += x[idx].mean(axis=1) - y[idx].mean(axis=1)
        value += x.mean() - y.mean()
    return _percentiles(diffs / len(a), value / len(a), level)


def perplexity(window_nll: Sequence[float], tokens_per_window: int, resamples: int = RESAMPLES, seed: int = 0,
               level: float = LEVEL) -> Interval:
    """exp(Σ NLL / Σ tokens) over windows, windows resampled (every window predicts the same number of tokens)."""
    w = np.asarray(window_nll, dtype=float)
    if w.size == 0 or tokens_per_window < 1:
        raise ValueError("perplexity needs windows that predict at least one token")
    idx = np.random.default_rng(seed).integers(0, w.size, size=(resamples, w.size))
    return _percentiles(np.exp(w[idx].mean(axis=1) / tokens_per_window), float(np.exp(w.mean() / tokens_per_window)),
                        level)


def perplexity_ratio(a: Sequence[float], b: Sequence[float], tokens_per_window: int, resamples: int = RESAMPLES,
                     seed: int = 0, level: float = LEVEL) -> Interval:
    """ppl(a) / ppl(b) on the same windows, resampled together (> 1: a is worse)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size != y.size:
        raise ValueError(f"{x.size} windows against {y.size}; paired windows must be the same")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    ratio = np.exp((x[idx].mean(axis=1) - y[idx].mean(axis=1)) / tokens_per_window)
    return _percentiles(ratio, float(np.exp((x.mean() - y.mean()) / tokens_per_window)), level)
