"""Verdict words — better / equivalent / worse / inconclusive — from paired intervals, at margins stated before
any result was read, and the multiplicity adjustment of a family of them (docs/protocol.md, "Verdicts").

One interval decides a comparison's word, and it is the interval printed beside the word:
- **equivalent**: the interval lies inside the margin band — ±1.5 points for the zero-shot mean, 1/1.05–1.05× for
  a perplexity ratio (symmetric on the log scale, so A ÷ B and B ÷ A get the same word), ±0.10 for the
  chance-normalised mean. Two one-sided tests (TOST), each at half the interval's tail level;
- **better** / **worse**: not equivalent, and the interval excludes no difference (0 points, 1×): the two-sided
  test at the interval's level, the side the interval lies on;
- **inconclusive**: neither — the data cannot say whether the difference matters.
Equivalent comes first: a difference shown to be smaller than the margin is one the protocol declared in advance
not to matter (it also absorbs 1.0001×, another torch thread count's rounding of the same plan).

A 95 % interval (unadjusted tables) thus tests a difference at 5 % two-sided and equivalence at 2.5 % per side —
stricter than the conventional 90 %-interval TOST, the price of one printed interval deciding all four words. A
family (`holm_tail`) prints every interval at the level of the last step of Holm's procedure over its
hypotheses, so that its words are exactly Holm's rejections.

Estimates with a standard error and degrees of freedom (`Estimate`, the draw-aware view: nirvana.reporting.draws)
give intervals at any level and the p-values Holm needs, on the analysis scale: a difference of fractions, or a
log perplexity ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

WORDS = ("better", "equivalent", "worse", "inconclusive")
NO_VERDICT = "–"  # nothing paired: no word at all

# The margins, fixed in docs/protocol.md before any comparison was read: the largest difference that does not
# matter. Zero-shot: points of the nine-task mean (as a fraction); perplexity: a ratio band, symmetric in log.
MARGIN_POINTS = 0.015
MARGIN_RATIO = 1.05
MARGIN_NORMALISED = 0.10  # chance-normalised mean: a tenth of the dense model's accuracy above chance
ALPHA = 0.05  # unadjusted: 95 % intervals; a family: Holm at this family-wise error rate


def band(perplexity: bool, margin: float | None = None) -> tuple[float, float]:
    """The equivalence band on the printed (natural) scale: (−m, m) for a difference, (1/r, r) for a ratio."""
    if perplexity:
        r = MARGIN_RATIO if margin is None else margin
        return 1 / r, r
    m = MARGIN_POINTS if margin is None else margin
    return -m, m


def word(lo: float, hi: float, perplexity: bool, margin: float | None = None) -> str:
    """The word of a comparison (the row's method against its reference) from its printed interval [lo, hi]:
    a difference (better above 0) or a perplexity ratio (better below 1)."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return NO_VERDICT
    low, high = band(perplexity, margin)
    if low < lo and hi < high:
        return "equivalent"
    null = 1.0 if perplexity else 0.0
    if lo > null:
        return "worse" if perplexity else "better"
    if hi < null:
        return "better" if perplexity else "worse"
    return "inconclusive"


def analysis_margin(perplexity: bool, margin: float | None = None) -> float:
    """The margin on the analysis scale of an `Estimate`: a difference of fractions, or log(ratio)."""
    if perplexity:
        return math.log(MARGIN_RATIO if margin is None else margin)
    return MARGIN_POINTS if margin is None else margin


@dataclass(frozen=True)
class Estimate:
    """A paired difference (or a single mean) on the analysis scale — a fraction, or a log perplexity (ratio) —
    with its standard error and degrees of freedom (inf: normal). `draws`: calibration draws it averages."""

    value: float
    se: float
    df: float = math.inf
    draws: int = 1

    def quantile(self, tail: float) -> float:
        """The multiplier of `se` for a two-sided interval at level 1 − tail."""
        p = 1 - tail / 2
        return float(sps.norm.ppf(p) if math.isinf(self.df) else sps.t.ppf(p, self.df))

    def interval(self, tail: float = ALPHA) -> tuple[float, float]:
        """The two-sided interval at level 1 − tail (`tail` 0.05: 95 %)."""
        if self.se == 0:
            return self.value, self.value
        q = self.quantile(tail) * self.se
        return self.value - q, self.value + q

    def _sf(self, z: float) -> float:
        return float(sps.norm.sf(z) if math.isinf(self.df) else sps.t.sf(z, self.df))

    def p_difference(self) -> float:
        """Two-sided p-value of "no difference": below `tail` exactly when the (1 − tail) interval excludes 0."""
        if self.se == 0:
            return 0.0 if self.value != 0 else 1.0
        return min(1.0, 2 * self._sf(abs(self.value) / self.se))

    def p_equivalence(self, margin: float) -> float:
        """TOST p-value of "the difference is at least `margin`", doubled so that it is below `tail` exactly when
        the (1 − tail) interval lies inside (−margin, margin): each one-sided test at tail / 2."""
        if self.se == 0:
            return 0.0 if abs(self.value) < margin else 1.0
        return min(1.0, 2 * max(self._sf((margin + self.value) / self.se), self._sf((margin - self.value) / self.se)))


def holm_tail(pvalues, alpha: float = ALPHA) -> float:
    """Holm's step-down procedure over a family's hypotheses at family-wise error `alpha`, as one interval level:
    the tail `a` of the last step (alpha / (m − k) after k rejections; alpha when all are rejected). Holm
    rejects a hypothesis exactly when its p-value is below `a`, so every (1 − a) interval of the family shows
    what Holm decided — its words are the adjusted verdicts, and the printed interval is the one that decided."""
    p = np.sort(np.asarray([x for x in pvalues if not math.isnan(x)], dtype=float))
    m = p.size
    if m == 0:
        return alpha
    steps = alpha / (m - np.arange(m))  # the thresholds alpha/m, alpha/(m−1), …, alpha
    failed = np.nonzero(p > steps)[0]
    k = int(failed[0]) if failed.size else m  # rejections before the first failure
    return alpha if k == m else alpha / (m - k)
