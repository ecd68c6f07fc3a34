"""The dense model's side of every KL on a probe, computed once per (model, probe) and kept on disk.

Every KL-judged decision compares plans of ONE dense model on ONE fixed probe (nirvana.probe.windows), so the
dense model's next-token log-probabilities on the probe are the same for every calibration draw, every γ, every run
and every step of a searched allocation (nirvana.allocation.search). `DenseReference` computes them once, batch by
batch as they are first needed, and keeps each batch in its own file in the score-cache folder beside the KL memo
(`dense_<key>/batch_00000.safetensors`, …): rating a plan then costs its pruned forwards only.

The key hashes what the numbers depend on: the model's weights (nirvana.scoring.cache.model_fingerprint) and
device, the probe's token ids, its batch size, and the storage precision. Like the KL memo, it does not hash the
torch thread count (another count may change the last bits of a forward; docs/protocol.md).

Precision (`calibration.probe.reference`):
- `float32` (default): the tensor the dense pass computes, `log_softmax(logits.float())`, stored as it is; a KL
  rated against it is bit for bit the KL `kls_to_dense` computes without it (tests/test_reference.py). Disk:
  windows × seq_len × vocab × 4 bytes — SmolLM2's 128 × 64 probe × 49,152 tokens: 1.6 GB; Qwen2.5's 151,936-token
  vocabulary: 5.0 GB.
- `float16`: half of that; each log-probability rounded to float16 (relative error ≤ 2⁻¹¹) and the distribution
  re-derived from it, so the KLs move by a small, measured amount (docs/method.md §3; tests bound it). Opt-in, and
  hashed in run ids (it changes numbers).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..adapters import get_adapter
from ..atomic import atomic_path, write_json

REFERENCE_PRECISIONS = {"float32": torch.float32, "float16": torch.float16}


def dense_log_probs(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The dense model's next-token log-probabilities of a probe batch, as every KL here takes them (fp32)."""
    return torch.log_softmax(get_adapter(model).logits(batch).float(), dim=-1)


class DenseReference:
    """The dense model's log-probabilities on one probe, batch by batch: computed on first use and, with a
    `folder`, kept there (one file per batch, written atomically: a killed run leaves whole batches only)."""

    def __init__(self, model: torch.nn.Module, folder: str | os.PathLike | None, precision: str = "float32"):
        if precision not in REFERENCE_PRECISIONS:
            raise ValueError(f"reference precision must be one of {tuple(REFERENCE_PRECISIONS)}, got {precision!r}")
        self.model, self.precision = model, precision
        self.folder = Path(folder) if folder is not None else None
        self.computed = 0  # batches this object ran the dense model on (the rest were read from disk)

    @staticmethod
    def folder_for(cache_dir: str | os.PathLike, model_key: str, device: str, probe_key: str, precision: str) -> Path:
        """`<cache_dir>/dense_<24 hex>`: one folder per (weights, device, probe ids and batch size, precision)."""
        h = hashlib.sha256(f"{model_key}|{device}|{probe_key}|{precision}".encode()).hexdigest()[:24]
        return Path(cache_dir) / f"dense_{h}"

    def log_probs(self, index: int, batch: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [b, T, V] (float32) of probe batch number `index` (`batch`: its token ids)."""
        path = self.folder / f"batch_{index:05d}.safetensors" if self.folder is not None else None
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            stored = load_file(str(path))["log_probs"]
            if tuple(stored.shape[:2]) == tuple(batch.shape):
                return stored.to(device=batch.device, dtype=torch.float32)
        dense = dense_log_probs(self.model, batch)
        self.computed += 1
        stored = dense.to(REFERENCE_PRECISIONS[self.precision])
        if path is not None:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"log_probs": stored.cpu().contiguous()}, str(tmp))
            meta = path.parent / "reference.json"
            if not meta.is_file():
                write_json(meta, {"precision": self.precision, "batch_shape": list(batch.shape),
                                  "vocab": int(dense.shape[-1]), "what": "dense log_softmax(logits.float()) per "
                                  "probe batch (nirvana.probe.reference)"})
        return stored.float() if self.precision != "float32" else dense

    def bytes_per_window(self, seq_len: int, vocab: int) -> int:
        return seq_len * vocab * REFERENCE_PRECISIONS[self.precision].itemsize

    def describe(self) -> dict:
        return {"precision": self.precision, "folder": str(self.folder) if self.folder is not None else None}


def reference_record(folder: Path) -> dict | None:
    """What a reference folder says about itself (None: not built yet)."""
    meta = folder / "reference.json"
    return json.loads(meta.read_text()) if meta.is_file() else None
