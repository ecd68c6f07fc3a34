"""Calibration data: sources, the official sampler, and the candidates KL selection chooses among
(docs/method.md §3). The KL probe the candidates are judged on lives in nirvana.probe; the choice itself is made by
nirvana.pipeline, which plans each candidate."""

from __future__ import annotations

import torch

from .config import SELECTIONS, CalibrationConfig, ProbeConfig
from .sampler import Windows, draw_windows, sample_windows
from .selection import Candidate, lowest, per_sample_candidates, plan_stability
from .sources import (
    SOURCES,
    HubTexts,
    calibration_pool,
    calibration_span,
    check_source,
    join_consecutive,
    load_id_tensor,
    load_texts,
    probe_span,
    probe_texts,
    source_span,
)


def build_calibration(source: str, tokenizer=None, n_samples: int = 32, seq_len: int = 128, seed: int = 0,
                      path: str | None = None, join: int = 1, field: str = "text", **hub) -> torch.Tensor:
    """One batch by the official sampler, for the CLI and notebooks → LongTensor [n_samples, seq_len]."""
    if source not in SOURCES:
        raise ValueError(f"unknown calibration source {source!r}; choose one of {sorted(SOURCES)}")
    if source == "tensor":
        if path is None:
            raise ValueError("calibration source 'tensor' needs calibration.path=FILE.pt")
        return load_id_tensor(path)
    if tokenizer is None:
        raise ValueError(f"calibration source {source!r} needs a tokenizer")
    texts = load_texts(source, path, field, join, **hub)
    return sample_windows(texts, tokenizer, n_samples, seq_len, seed)


def draw_candidates(c: CalibrationConfig, tokenizer) -> list[Candidate]:
    """The calibration sets a run chooses among: the official draw at `c.seed` (selection none), else one set per
    candidate seed or source. No candidate ever draws a document of the run's probe (calibration_pool)."""
    if c.source == "tensor":
        return [Candidate("tensor", "tensor", c.seed, load_id_tensor(c.path))]
    if c.selection == "none":
        specs = [(c.source, c.seed)]
    elif c.candidate_sources:
        specs = [(s, c.seed) for s in c.candidate_sources]
    else:
        specs = [(c.source, c.seed + k) for k in range(c.candidates)]
    pools = {s: calibration_pool(s, c.path, c.field, c.join, c.probe.documents, **c.hub)
             for s in dict.fromkeys(s for s, _ in specs)}
    out = []
    for source, seed in specs:
        texts, reserved = pools[source]
        w = draw_windows(texts, tokenizer, c.n_samples, c.seq_len, seed, exclude=reserved)
        out.append(Candidate(f"{source}/seed={seed}", source, seed, w.ids, w.texts))
    return out


__all__ = [
    "SELECTIONS", "SOURCES", "CalibrationConfig", "Candidate", "HubTexts", "ProbeConfig", "Windows",
    "build_calibration", "calibration_pool", "calibration_span", "check_source", "draw_candidates", "draw_windows",
    "join_consecutive", "load_id_tensor", "load_texts", "lowest", "per_sample_candidates", "plan_stability",
    "probe_span", "probe_texts", "sample_windows", "source_span",
]
