"""Baselines whose allocation is part of the method (they do not fit score-then-allocate)."""
