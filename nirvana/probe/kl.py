"""How far a plan's model is from the dense one: the mean per-token KL(P_dense ‖ P_pruned) over the vocabulary
(fp32 log-softmax) on a fixed probe (nirvana.probe.windows), as the official code measures it (128 × 64 tokens).

Every KL-judged choice — calibration selection, γ = auto — rates many plans of ONE dense model in memory (no reload):
each plan runs either as a physically cut copy that shares every uncut tensor, when the copies fit in memory, or as a
mask on the dense weights (`plan_forward`). Several plans rated together share each probe batch's dense forward; with
a `DenseReference` (nirvana.probe.reference) the dense side is read from disk instead, computed once per (model,
probe) for every draw, γ, run and search. A `KLMemo` remembers every number measured, so a plan met again costs
nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..adapters import get_adapter
from ..atomic import append_jsonl_line, iter_jsonl
from ..scoring.cache import model_fingerprint
from ..surgery.cut import cut_copy, cut_copy_bytes
from ..surgery.masking import masked
from ..surgery.plan import PruningPlan
from ..sysmem import available_bytes
from .reference import DenseReference


class KLMemo:
    """KLs already measured, by (kept units, probe, batch size): a plan met again — the chosen γ's plan when
    selection rates its calibration draw, the final plan after selection — costs no forward. In memory it is
    valid while the model's weights do not change (one `pipeline.prune` call). With a `path` (one file per model
    weights and device: `kl_memo_path`) every KL is also appended there as it is measured and
    read back by the next memo on that file, so an interrupted selection resumes where it stopped — γ by KL on
    a 0.5B model is hours of probe forwards on a CPU — and runs that meet the same plan share its number."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.values: dict[tuple[str, str], float] = {}  # (plan_key, probe_key) → KL
        self.path = Path(path) if path is not None else None
        if self.path is not None and self.path.is_file():
            for r in iter_jsonl(self.path, strict=False):  # a torn last line (killed writer) is skipped
                if isinstance(r.get("kl"), float) and isinstance(r.get("plan"), str) and isinstance(r.get("probe"), str):
                    self.values[(r["plan"], r["probe"])] = r["kl"]

    def add(self, key: tuple[str, str], kl: float) -> None:
        self.values[key] = kl
        if self.path is not None:
            append_jsonl_line(self.path, {"plan": key[0], "probe": key[1], "kl": kl})

    @staticmethod
    def plan_key(plan: PruningPlan) -> str:
        """What the masked model's output depends on: the kept units and any compensation biases."""
        h = hashlib.sha256(json.dumps(plan.kept_units()).encode())
        for index, biases in sorted((plan.output_bias or {}).items()):
            for kind, bias in sorted(biases.items()):
                h.update(f"{index}:{kind}".encode())
                h.update(torch.as_tensor(bias).detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    @staticmethod
    def probe_key(probe_ids: torch.Tensor, batch_size: int) -> str:
        probe = hashlib.sha256(probe_ids.cpu().contiguous().numpy().tobytes()).hexdigest()
        return f"{probe}:{tuple(probe_ids.shape)}:{batch_size}"


def memo_probe_key(probe_ids: torch.Tensor, batch_size: int, reference: DenseReference | None = None) -> str:
    """The memo's probe key of a rating: the probe's ids and batch size, and a lossy reference's precision (a float16
    reference gives other numbers than the exact float32 one, which gives today's)."""
    key = KLMemo.probe_key(probe_ids, batch_size)
    if reference is not None and reference.precision != "float32":
        key += f":reference={reference.precision}"
    return key


def kl_memo_path(cache_dir: str | os.PathLike, model: torch.nn.Module, fingerprint: str | None = None) -> Path:
    """The file of this model's plan KLs on probes: one per (weights, device), so a KL is reused only where the
    same plan was measured on the same model; the plan and probe keys are inside (KLMemo). `fingerprint`: the
    model's `model_fingerprint`, when the caller has it already."""
    h = hashlib.sha256((fingerprint or model_fingerprint(model)).encode())
    h.update(str(next(model.parameters()).device.type).encode())
    return Path(cache_dir) / f"kl_{h.hexdigest()[:24]}.jsonl"


# Physically cut copies are used for the probe forwards when all of a call's copies fit in this share of the
# memory still available; the rest is left for the batch's activations and vocabulary-wide log-probabilities.
CUT_MEMORY_SHARE = 0.5
PLAN_FORWARDS = ("auto", "cut", "masked")


def plan_forward(model: torch.nn.Module, plans: list[PruningPlan], forward: str = "auto") -> str:
    """How `kls_to_dense` runs the plans: `cut` — one physically cut copy per plan (nirvana.surgery.cut_copy,
    sharing every tensor it does not cut), each forward at the pruned model's cost (the whole γ choice 1.11× faster
    at s = 0.2 and 1.29× at s = 0.5 on SmolLM2: `make bench` section kl); `masked` — the dense model with the plan's units zeroed in place (no
    memory, the dense model's cost). `auto`: cut when every copy fits in CUT_MEMORY_SHARE of the memory
    available (sysmem), else masked. The two agree up to float summation order."""
    if forward not in PLAN_FORWARDS:
        raise ValueError(f"forward must be one of {PLAN_FORWARDS}, got {forward!r}")
    if forward != "auto":
        return forward
    available = available_bytes(next(model.parameters()).device)
    need = sum(cut_copy_bytes(model, plan) for plan in plans)
    return "cut" if available is not None and need <= CUT_MEMORY_SHARE * available else "masked"


# The per-token KL is computed this many probe tokens at a time: the [tokens, vocab] temporaries of a slice stay in
# the CPU's cache (5.8× faster on SmolLM2's 49,152-token vocabulary than the whole batch at once, measured), and each
# token's value is the one the whole batch gives, bit for bit (row-wise log-softmax and sum; tests/test_reference.py).
# None: the whole batch at once (the arithmetic before this constant existed).
KL_TOKEN_CHUNK: int | None = 16


def token_kls(dense: torch.Tensor, p_dense: torch.Tensor, logits: torch.Tensor,
              chunk: int | None = None) -> torch.Tensor:
    """Per-token KL(P_dense ‖ P_pruned) [b, T] from the dense log-probabilities (and their exp) and the pruned
    model's logits: Σ_v p (log p − log q), q = softmax(logits) in fp32; `chunk` tokens at a time (KL_TOKEN_CHUNK)."""
    chunk = KL_TOKEN_CHUNK if chunk is None else chunk
    if not chunk:
        pruned = torch.log_softmax(logits.float(), dim=-1)
        return (p_dense * (dense - pruned)).sum(dim=-1)
    shape, vocab = dense.shape[:-1], dense.shape[-1]
    d, p, z = dense.reshape(-1, vocab), p_dense.reshape(-1, vocab), logits.reshape(-1, vocab)
    out = torch.empty(d.shape[0], dtype=torch.float32, device=dense.device)
    for s in range(0, d.shape[0], chunk):
        pruned = torch.log_softmax(z[s : s + chunk].float(), dim=-1)
        out[s : s + chunk] = (p[s : s + chunk] * (d[s : s + chunk] - pruned)).sum(dim=-1)
    return out.view(shape)


def _fitting_chunks(model: torch.nn.Module, plans: list[PruningPlan], forward: str) -> list[list[int]]:
    """Groups of plan indices to run together. Without a dense reference all plans share each batch's dense forward,
    so they run as one group (cut copies if all fit, else masks: `plan_forward`). With one, nothing is shared across
    plans, so they run in groups whose cut copies fit the memory share (one plan per group at least)."""
    if forward != "auto":
        return [list(range(len(plans)))]
    available = available_bytes(next(model.parameters()).device)
    if available is None:
        return [list(range(len(plans)))]
    groups, current, used = [], [], 0
    for i, plan in enumerate(plans):
        need = cut_copy_bytes(model, plan)
        if current and used + need > CUT_MEMORY_SHARE * available:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += need
    return [*groups, current] if current else groups


@torch.no_grad()
def kls_to_dense(model: torch.nn.Module, plans: list[PruningPlan], probe_ids: torch.Tensor,
                 batch_size: int, memo: KLMemo | None = None, forward: str = "auto",
                 reference: DenseReference | None = None) -> list[float]:
    """`kl_to_dense` of several plans in one pass over the probe: each batch's dense log-probabilities are
    computed once and shared (G plans: G + 1 forwards per batch instead of 2G — what choosing γ among G costs);
    each plan's number is the one it gets alone, bit for bit (same batches, same order, run the same way). With a
    `memo`, plans measured before on this probe are read from it (all of them: no forward at all). `forward`:
    how the plans run (`plan_forward`). `reference` (nirvana.probe.reference, built for these `probe_ids` — or a
    prefix of whole batches of them — and `batch_size`): the dense log-probabilities are read from it instead of
    recomputed (no dense forward at all once it holds the batch), and the plans run in groups that fit in memory
    as cut copies; the numbers are the same."""
    if memo is not None:
        probe = memo_probe_key(probe_ids, batch_size, reference)  # hashed once for all the plans
        keys = [(KLMemo.plan_key(plan), probe) for plan in plans]
        todo = [i for i, k in enumerate(keys) if k not in memo.values]
        if todo:
            fresh = kls_to_dense(model, [plans[i] for i in todo], probe_ids, batch_size, forward=forward,
                                 reference=reference)
            for i, kl in zip(todo, fresh, strict=True):
                memo.add(keys[i], kl)
        return [memo.values[k] for k in keys]
    if reference is not None and len(plans) > 1:
        out: list[float] = [0.0] * len(plans)
        for group in _fitting_chunks(model, plans, forward):
            for i, kl in zip(group, _kls(model, [plans[i] for i in group], probe_ids, batch_size, forward, reference),
                             strict=True):
                out[i] = kl
        return out
    return _kls(model, plans, probe_ids, batch_size, forward, reference)


def _kls(model, plans, probe_ids, batch_size, forward, reference) -> list[float]:
    adapter = get_adapter(model)
    device = next(model.parameters()).device
    cut = [get_adapter(cut_copy(model, p)) for p in plans] if plan_forward(model, plans, forward) == "cut" else None

    def pruned_logits(i: int, batch: torch.Tensor) -> torch.Tensor:
        if cut is not None:
            return cut[i].logits(batch)
        with masked(model, plans[i]):
            return adapter.logits(batch)

    totals, count = [0.0] * len(plans), 0
    starts = range(0, probe_ids.shape[0], batch_size)
    for start in tqdm(starts, desc=f"KL of {len(plans)} plan(s) on the probe", leave=False, disable=len(starts) < 2):
        batch = probe_ids[start : start + batch_size].to(device)
        if reference is not None:
            dense = reference.log_probs(start // batch_size, batch)
        else:
            dense = torch.log_softmax(adapter.logits(batch).float(), dim=-1)
        p_dense = dense.exp()
        for i in range(len(plans)):
            kl = token_kls(dense, p_dense, pruned_logits(i, batch))
            totals[i] += float(kl.double().sum())
        count += dense.shape[:-1].numel()  # probe tokens in this batch
    for plan, total in zip(plans, totals, strict=True):
        if not math.isfinite(total):
            raise ValueError(f"the KL to the dense model is not finite ({total}) on the probe for this plan "
                             f"({plan.summary()}): the model produced NaN/inf logits")
    return [total / count for total in totals]


def kl_to_dense(model: torch.nn.Module, plan: PruningPlan, probe_ids: torch.Tensor, batch_size: int,
                memo: KLMemo | None = None, forward: str = "auto", reference: DenseReference | None = None) -> float:
    """Mean over probe tokens of KL(P_dense ‖ P_plan); the dense model is left as it was."""
    return kls_to_dense(model, [plan], probe_ids, batch_size, memo, forward, reference)[0]
