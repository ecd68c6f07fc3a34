"""The fixed KL probe of a text source: the same windows for every run, candidate and γ (docs/protocol.md)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..calibration import CalibrationConfig, probe_texts


@dataclass
class Probe:
    """The probe windows of one source for one tokenizer."""

    ids: torch.Tensor  # [n_samples, seq_len]
    texts: list[str]  # the probe's documents (calibration never draws them)
    record: dict  # identity: source, span, shape and a hash of the token ids (recorded with every KL row)


def build_probe(c: CalibrationConfig, tokenizer) -> Probe:
    """The probe of `c`'s first source: its probe documents joined by "\\n\\n", tokenized once, cut into consecutive
    windows of `c.probe.seq_len` tokens; the first `c.probe.n_samples` of them. Deterministic: nothing drawn."""
    source, p = c.sources[0], c.probe
    texts, span = probe_texts(source, p.documents, c.path, c.field, **c.hub)
    stream = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    if len(stream) < p.n_samples * p.seq_len:
        raise ValueError(f"the probe of {source!r} ({span}) has {len(stream)} tokens, fewer than calibration.probe's "
                         f"{p.n_samples} × {p.seq_len}; ask for fewer windows (or more calibration.probe.documents)")
    ids = torch.tensor(stream[: p.n_samples * p.seq_len], dtype=torch.long).view(p.n_samples, p.seq_len)
    digest = hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]
    return Probe(ids, texts, {"source": source, "span": str(span), "n_samples": p.n_samples, "seq_len": p.seq_len,
                              "sha256": digest})
