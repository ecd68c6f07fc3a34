"""An on-disk cache of unit scores, so sweeps do not rescore.

Scores depend on the model's weights, the scorer and the calibration batch — not on sparsity, γ or the
allocator. A sweep over sparsities or γ (Table 2, the γ ablation, the demo) therefore needs ONE scoring
pass per (model, scorer, calibration); later runs read it from here. The key fingerprints the weights
themselves (sums of every parameter), so a changed checkpoint never reuses stale scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .units import UnitScores


def model_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(repr((tuple(p.shape), str(p.dtype), float(p.double().sum()), float(p.double().abs().sum()))).encode())
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

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"attention.{i}": s.contiguous() for i, s in enumerate(scores.attention)}
    tensors |= {f"mlp.{i}": s.contiguous() for i, s in enumerate(scores.mlp)}
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp)
    final = cache_dir / f"{key}.safetensors"
    os.replace(tmp, final)
    return final
