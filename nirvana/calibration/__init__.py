"""Calibration data: sources, the official sampler, and KL-based selection (docs/method.md §3)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .sampler import Windows, draw_windows, sample_windows
from .selection import SELECTIONS, Candidate, kl_to_dense, per_sample_candidates, select_by_kl
from .sources import SOURCES, HubTexts, join_consecutive, load_id_tensor, load_texts


def build_calibration(
    source: str,
    tokenizer=None,
    n_samples: int = 32,
    seq_len: int = 128,
    seed: int = 0,
    path: str | None = None,
    join: int = 1,
    field: str = "text",
    **hub,
) -> torch.Tensor:
    """One entry point for the CLI and notebooks → LongTensor [n_samples, seq_len]."""
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


@dataclass
class CalibrationChoice:
    ids: torch.Tensor  # the calibration batch to prune with
    record: dict  # how it was chosen: selection, source, seed, candidates with their KLs, probe
    probe_ids: torch.Tensor | None = None  # KL probe windows, from texts no candidate used


def choose_calibration(
    model,
    tokenizer,
    plan_for: Callable,
    source: str,
    n_samples: int = 32,
    seq_len: int = 128,
    seed: int = 0,
    selection: str = "none",
    candidates: int = 8,
    candidate_sources: list[str] | None = None,
    probe: dict | None = None,
    path: str | None = None,
    join: int = 1,
    field: str = "text",
    want_probe: bool = False,
    **hub,
) -> CalibrationChoice:
    """The calibration batch to prune with, and a record of how it was chosen (for plans and result rows).

    selection="none": the official sampler on `source` with `seed`. "kl" / "kl_per_sample": see
    nirvana.calibration.selection; candidates are `candidates` consecutive seeds of `source`, or each of
    `candidate_sources` with `seed`. The probe set (drawn with selection, or with `want_probe`) comes from
    the first source's texts that no candidate used.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown calibration selection {selection!r}; choose one of {SELECTIONS}")
    probe = {"n_samples": 128, "seq_len": 64, "seed": 42, "batch_size": 16, **(probe or {})}
    if source == "tensor":
        if selection != "none":
            raise ValueError("KL selection draws candidates from text; a saved tensor has nothing to choose from")
        return CalibrationChoice(build_calibration(source, path=path), {"selection": "none", "source": source})
    if candidate_sources and "tensor" in candidate_sources:
        raise ValueError("KL selection draws candidates from text; a saved tensor has nothing to choose from")
    if candidates < 1:
        raise ValueError(f"calibration.candidates must be ≥ 1, got {candidates}")

    if selection == "none":
        specs = [(source, seed)]
    elif candidate_sources:
        specs = [(s, seed) for s in candidate_sources]
    else:
        specs = [(source, seed + k) for k in range(candidates)]
    texts_of = {s: load_texts(s, path, field, join, **hub) for s in dict.fromkeys(s for s, _ in specs)}
    pool = []
    for s, k in specs:
        w = draw_windows(texts_of[s], tokenizer, n_samples, seq_len, k)
        pool.append(Candidate(f"{s}/seed={k}", s, k, w.ids, w.texts))
    probe_ids = None
    if selection != "none" or want_probe:
        used = {t for c in pool for t in c.texts}
        probe_ids = draw_windows(texts_of[specs[0][0]], tokenizer, probe["n_samples"], probe["seq_len"], probe["seed"],
                                 exclude=used).ids
    record = {"selection": selection, "probe": {**probe, "source": specs[0][0]}}
    if selection == "none":
        return CalibrationChoice(pool[0].ids, {**record, "source": source, "seed": seed}, probe_ids)
    if selection == "kl":
        best = select_by_kl(model, pool, probe_ids, plan_for, probe["batch_size"])
        record.update(candidates=[c.record() for c in pool], chosen=pool[best].label,
                      source=pool[best].source, seed=pool[best].seed)
        return CalibrationChoice(pool[best].ids, record, probe_ids)
    singles = per_sample_candidates(pool)
    if len(singles) < n_samples:
        raise ValueError(f"kl_per_sample needs ≥ {n_samples} distinct candidate windows, the pool has {len(singles)}")
    select_by_kl(model, singles, probe_ids, plan_for, probe["batch_size"], desc="KL per sample")
    best = sorted(range(len(singles)), key=lambda i: singles[i].kl)[:n_samples]
    record.update(candidates=[c.record() for c in singles], chosen=[singles[i].label for i in best], source=source,
                  seed=seed)
    return CalibrationChoice(torch.cat([singles[i].ids for i in best]), record, probe_ids)


__all__ = [
    "SELECTIONS", "Candidate", "CalibrationChoice", "choose_calibration", "kl_to_dense", "per_sample_candidates", "select_by_kl",
    "SOURCES", "HubTexts", "Windows", "build_calibration", "draw_windows", "join_consecutive", "load_id_tensor",
    "load_texts", "sample_windows",
]
