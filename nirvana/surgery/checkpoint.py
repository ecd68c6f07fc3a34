"""Pruned checkpoints that load anywhere: `save_pruned` / `load_pruned`.

A checkpoint folder holds the usual HF files, `pruning_plan.json`, and `modeling_nirvana.py` (referenced by
`auto_map`), so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` and the stock
`lm_eval --model hf --model_args pretrained=dir,trust_remote_code=True` work without this package.
Encoder–decoders (T5) register under `AutoModelForSeq2SeqLM` instead (the adapter's `auto_model_class`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from torch import nn

from ..adapters import get_adapter
from ..atomic import atomic_dir
from ..models import MODELING_FILE as MODELING_NAME
from .plan import PLAN_FILENAME, PruningPlan

MODELING_FILE = Path(__file__).resolve().parents[1] / "checkpoint_code" / MODELING_NAME


def check_save_dir(save_dir: str | os.PathLike | None, overwrite: bool = False) -> None:
    """A folder that exists and holds anything is replaced only when asked: checked before any heavy work."""
    if save_dir is None or overwrite:
        return
    path = Path(save_dir)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"save_dir {path} exists and is not empty; choose another folder, or overwrite=true "
                              "to replace it")


def save_pruned(model: nn.Module, plan: PruningPlan | None, save_dir: str | os.PathLike, tokenizer=None,
                overwrite: bool = False) -> Path:
    """Save atomically: written to a sibling temp folder, then renamed, so no half checkpoint survives a crash.
    An existing non-empty `save_dir` is refused unless `overwrite`."""
    check_save_dir(save_dir, overwrite)
    save_dir = Path(save_dir)
    adapter = get_adapter(model)
    config = model.config
    adapter.record_layer_widths()  # per-layer widths in the config, so the folder describes itself
    module = MODELING_FILE.stem
    config.auto_map = {adapter.auto_model_class: f"{module}.{adapter.checkpoint_class_name()}"}
    with atomic_dir(save_dir) as tmp:
        model.save_pretrained(tmp)
        shutil.copy2(MODELING_FILE, tmp / MODELING_FILE.name)
        if plan is not None:
            plan.save(tmp / PLAN_FILENAME)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return save_dir


def load_pruned(path: str | os.PathLike, **kwargs) -> nn.Module:
    """Load a checkpoint written by `save_pruned` (or any HF causal / seq2seq LM folder)."""
    from ..models import auto_model_class

    kwargs.setdefault("trust_remote_code", True)  # our own checkpoint: the code in it is the file we ship
    return auto_model_class(str(path), kwargs["trust_remote_code"]).from_pretrained(str(path), **kwargs)
