"""How far a plan's model is from the dense one: the mean per-token KL(P_dense ‖ P_pruned) over the vocabulary
(fp32 log-softmax) on a fixed probe (nirvana.probe.windows), as the official code measures it (128 × 64 tokens).

Every KL-judged choice — calibration selection, γ = auto — rates many plans of ONE dense model in memory (no reload):
each plan runs either as a physically cut copy that shares every uncut tensor, when the copies fit in memory, or as a
mask on the dense weights (`plan_forward`). Several plans rated together share each probe batch's dense forward, and
a `KLMemo` remembers every number measured, so a plan met again costs nothing.
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


def kl_memo_path(cache_dir: str | os.PathLike, model: torch.nn.Module) -> Path:
    """The file of this model's plan KLs on probes: one per (weights, device), so a KL is reused only where the
    same plan was measured on the same model; the plan and probe keys are inside (KLMemo)."""
    h = hashlib.sha256(model_fingerprint(model).encode())
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


@torch.no_grad()
def kls_to_dense(model: torch.nn.Module, plans: list[PruningPlan], probe_ids: torch.Tensor,
                 batch_size: int, memo: KLMemo | None = None, forward: str = "auto") -> list[float]:
    """`kl_to_dense` of several plans in one pass over the probe: each batch's dense log-probabilities are
    computed once and shared (G plans: G + 1 forwards per batch instead of 2G — what choosing γ among G costs);
    each plan's number is the one it gets alone, bit for bit (same batches, same order, run the same way). With a
    `memo`, plans measured before on this probe are read from it (all of them: no forward at all). `forward`:
    how the plans run (`plan_forward`)."""
    if memo is not None:
        probe = KLMemo.probe_key(probe_ids, batch_size)  # hashed once for all the plans
        keys = [(KLMemo.plan_key(plan), probe) for plan in plans]
        todo = [i for i, k in enumerate(keys) if k not in memo.values]
        if todo:
            fresh = kls_to_dense(model, [plans[i] for i in todo], probe_ids, batch_size, forward=forward)
            for i, kl in zip(todo, fresh, strict=True):
                memo.add(keys[i], kl)
        return [memo.values[k] for k in keys]
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
        dense = torch.log_softmax(adapter.logits(batch).float(), dim=-1)
        p_dense = dense.exp()
        for i in range(len(plans)):
            pruned = torch.log_softmax(pruned_logits(i, batch).float(), dim=-1)
            kl = (p_dense * (dense - pruned)).sum(dim=-1)
            totals[i] += float(kl.double().sum())
            del pruned
        count += dense.shape[:-1].numel()  # probe tokens in this batch
    for plan, total in zip(plans, totals, strict=True):
        if not math.isfinite(total):
            raise ValueError(f"the KL to the dense model is not finite ({total}) on the probe for this plan "
                             f"({plan.summary()}): the model produced NaN/inf logits")
    return [total / count for total in totals]


def kl_to_dense(model: torch.nn.Module, plan: PruningPlan, probe_ids: torch.Tensor, batch_size: int,
                memo: KLMemo | None = None, forward: str = "auto") -> float:
    """Mean over probe tokens of KL(P_dense ‖ P_plan); the dense model is left as it was."""
    return kls_to_dense(model, [plan], probe_ids, batch_size, memo, forward)[0]
