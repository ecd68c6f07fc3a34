"""Surgery: the plan (which units survive), cutting the model to it, masking it in place, and the checkpoint.

plan.py          PruningPlan: the whole decision as JSON, reproducible on the dense model
cut.py           apply_plan: physically remove the dropped units (a smaller dense model), cut copies
masking.py       run the dense model as if a plan were applied, and undo it
compensation.py  FLAP's bias compensation of removed channels
checkpoint.py    save_pruned / load_pruned: HF folders that load in stock transformers (nirvana/checkpoint_code/)
"""

from .checkpoint import load_pruned, save_pruned
from .compensation import compensation_biases
from .cut import apply_plan, count_parameters, cut_copy
from .masking import masked
from .plan import PLAN_FILENAME, LayerPlan, PruningPlan

__all__ = ["PLAN_FILENAME", "LayerPlan", "PruningPlan", "apply_plan", "compensation_biases", "count_parameters",
           "cut_copy", "load_pruned", "masked", "save_pruned"]
