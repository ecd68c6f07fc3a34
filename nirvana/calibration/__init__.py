"""Calibration data: sources, the official sampler, and KL-based selection (docs/method.md §3)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .sampler import Windows, draw_windows, sample_windows
from .selection import (
    SELECTIONS,
    Candidate,
    KLMemo,
    kl_to_dense,
    kls_to_dense,
    per_sample_candidates,
    plan_stability,
    select_by_kl,
)
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
class Probe:
    """The fixed KL probe of a text source for one tokenizer: the same windows for every run and candidate."""

    ids: torch.Tensor  # [n_samples, seq_len]
    texts: list[str]  # the probe's documents (calibration never draws them)
    record: dict  # identity: source, span, shape and a hash of the token ids (recorded with every KL row)


def build_probe(source: str, tokenizer, n_samples: int = 128, seq_len: int = 64, documents: int = 200,
                path: str | None = None, field: str = "text", **hub) -> Probe:
    """The probe windows of `source`: its probe documents joined by "\\n\\n", tokenized once, cut into consecutive
    windows of `seq_len` tokens; the first `n_samples` of them. Deterministic: no seed, nothing drawn."""
    if n_samples < 1 or seq_len < 2:
        raise ValueError(f"calibration.probe needs n_samples ≥ 1 and seq_len ≥ 2, got {n_samples} and {seq_len}")
    texts, span = probe_texts(source, documents, path, field, **hub)
    stream = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    if len(stream) < n_samples * seq_len:
        raise ValueError(f"the probe of {source!r} ({span}) has {len(stream)} tokens, fewer than calibration.probe's "
                         f"{n_samples} × {seq_len}; ask for fewer windows (or more calibration.probe.documents)")
    ids = torch.tensor(stream[: n_samples * seq_len], dtype=torch.long).view(n_samples, seq_len)
    digest = hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]
    return Probe(ids, texts, {"source": source, "span": str(span), "n_samples": n_samples, "seq_len": seq_len,
                              "sha256": digest})


@dataclass
class CalibrationChoice:
    ids: torch.Tensor  # the calibration batch to prune with
    record: dict  # how it was chosen: selection, source, seed, candidates with their KLs, probe
    probe: Probe | None = None  # the fixed KL probe of the source (when a KL is measured)


PROBE_KEYS = ("n_samples", "seq_len", "documents")


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
    kl_memo: KLMemo | None = None,
    **hub,
) -> CalibrationChoice:
    """The calibration batch to prune with, and a record of how it was chosen (for plans and result rows).

    selection="none": the official sampler on `source` with `seed`. "kl" / "kl_per_sample": see
    nirvana.calibration.selection; candidates are `candidates` consecutive seeds of `source`, or each of
    `candidate_sources` with `seed`. The probe (built with selection, or with `want_probe`) is the fixed probe of
    the first source; no candidate ever draws one of its documents.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown calibration selection {selection!r}; choose one of {SELECTIONS}")
    probe_cfg = {k: v for k, v in (probe or {}).items() if k in PROBE_KEYS}
    batch_size = (probe or {}).get("batch_size", 16)
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
    fixed = None
    if selection != "none" or want_probe:
        fixed = build_probe(specs[0][0], tokenizer, path=path, field=field, **probe_cfg, **hub)
    documents = probe_cfg.get("documents", 200)
    sources = {s: calibration_pool(s, path, field, join, documents, **hub) for s in dict.fromkeys(s for s, _ in specs)}
    pool = []
    for s, k in specs:
        texts, reserved = sources[s]  # the source's probe documents are never drawn (calibration_pool)
        w = draw_windows(texts, tokenizer, n_samples, seq_len, k, exclude=reserved)
        pool.append(Candidate(f"{s}/seed={k}", s, k, w.ids, w.texts))
    record = {"selection": selection, "probe": fixed.record if fixed else None}
    if selection == "none":
        return CalibrationChoice(pool[0].ids, {**record, "source": source, "seed": seed}, fixed)
    if selection == "kl":
        best = select_by_kl(model, pool, fixed.ids, plan_for, batch_size, memo=kl_memo)
        record.update(candidates=[c.record() for c in pool], chosen=pool[best].label,
                      source=pool[best].source, seed=pool[best].seed,
                      stability=plan_stability([c.plan for c in pool]))
        return CalibrationChoice(pool[best].ids, record, fixed)
    singles = per_sample_candidates(pool)
    if len(singles) < n_samples:
        raise ValueError(f"kl_per_sample needs ≥ {n_samples} distinct candidate windows, the pool has {len(singles)}")
    select_by_kl(model, singles, fixed.ids, plan_for, batch_size, desc="KL per sample", memo=kl_memo)
    best = sorted(range(len(singles)), key=lambda i: singles[i].kl)[:n_samples]
    record.update(candidates=[c.record() for c in singles], chosen=[singles[i].label for i in best], source=source,
                  seed=seed)
    return CalibrationChoice(torch.cat([singles[i].ids for i in best]), record, fixed)


__all__ = [
    "SELECTIONS", "Candidate", "CalibrationChoice", "KLMemo", "Probe", "build_probe", "choose_calibration", "kl_to_dense",
    "kls_to_dense", "per_sample_candidates", "plan_stability", "select_by_kl", "SOURCES", "HubTexts", "Windows", "build_calibration", "draw_windows",
    "join_consecutive", "load_id_tensor", "load_texts", "sample_windows", "calibration_pool", "calibration_span",
    "check_source",
    "probe_span", "probe_texts",
    "source_span",
]
