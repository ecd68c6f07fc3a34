"""Scoring: how much each attention group and MLP neuron matters (docs/method.md §1).

scorers.py    NIRVANA's output saliency and the magnitude / Taylor / random criteria → UnitScores
units.py      UnitScores and the reductions from weights or channels to units
targets.py    the scalar a gradient criterion differentiates (NIRVANA's output max)
schedule.py   how a gradient scorer runs its batch to fit memory (micro-batches, checkpointing)
statistics.py activation statistics of the output projections' inputs (Wanda-sp, FLAP, bias compensation)
cache.py      unit scores on disk, per (model weights, scorer, calibration)
"""

from .scorers import (
    SCORERS,
    GradientSaliencyScorer,
    MagnitudeScorer,
    NirvanaScorer,
    RandomScorer,
    Scorer,
    TaylorScorer,
    make_scorer,
)
from .units import UnitScores

__all__ = ["SCORERS", "GradientSaliencyScorer", "MagnitudeScorer", "NirvanaScorer", "RandomScorer", "Scorer",
           "TaylorScorer", "UnitScores", "make_scorer"]
