"""An on-disk cache of unit scores, so sweeps do not rescore.

Scores depend on the model's weights, the scorer and the calibration batch — not on sparsity, γ or the
allocator. A sweep over sparsities or γ (Table 2, the γ ablation, the demo) therefore needs ONE scoring
pass per (model, scorer, calibration); later runs read it from here. The key hashes the weights' bytes (every
parameter, in order: a permuted or retrained checkpoint never reuses stale scores; about a second per GB),
the config, the scorer and every option that can change its scores, the device, and the calibration ids.
Non-finite scores are never cached.

The same folder keeps each model's KLs of plans on a probe (nirvana.probe.kl_memo_path), keyed by the same weight
fingerprint (`model_fingerprint`) and device.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..atomic import atomic_path
from .units import UnitScores


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the config and of every parameter's name, shape, dtype and bytes."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            flat = p.detach().reshape(-1)
            raw = flat.view(torch.int16) if flat.dtype in (torch.bfloat16, torch.float16) else flat  # no numpy bf16
            h.update(raw.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(model: torch.nn.Module, scorer_name: str, scorer_options: dict, input_ids: torch.Tensor | None) -> str:
    h = hashlib.sha256(model_fingerprint(model).encode())
    h.update(json.dumps({"scorer": scorer_name, **scorer_options}, sort_keys=True, default=str).encode())
    h.update(str(next(model.parameters()).device.type).encode())
    if input_ids is not None:
        h.update(input_ids.detach().cpu().long().numpy().tobytes())
        h.update(str(tuple(input_ids.shape)).encode())
    return h.hexdigest()[:24]


def load_scores(cache_dir: str | os.PathLike, key: str) -> UnitScores | None:
    path = Path(cache_dir) / f"{key}.safetensors"
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    t = load_file(str(path))
    n = len([k for k in t if k.startswith("attention.")])
    return UnitScores([t[f"attention.{i}"] for i in range(n)], [t[f"mlp.{i}"] for i in range(n)])


def save_scores(cache_dir: str | os.PathLike, key: str, scores: UnitScores) -> Path:
    from safetensors.torch import save_file

    bad = scores.non_finite()
    if bad:  # a broken criterion must not poison every later run that hits the cache
        raise ValueError(f"refusing to cache non-finite unit scores ({len(bad)}, first {bad[:3]})")
    tensors = {f"attention.{i}": s.contiguous() for i, s in enumerate(scores.attention)}
    tensors |= {f"mlp.{i}": s.contiguous() for i, s in enumerate(scores.mlp)}
    final = Path(cache_dir) / f"{key}.safetensors"
    with atomic_path(final) as tmp:
        save_file(tensors, str(tmp))
    return final
