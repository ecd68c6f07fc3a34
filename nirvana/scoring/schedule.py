"""Scoring schedules: how a gradient scorer runs its calibration batch, chosen to fit memory (`schedule=auto`).

A schedule is (micro_batch_size, checkpointing). Every schedule gives the same unit scores up to float
summation order (nirvana.scoring); they differ in memory and time, and which is right depends on whether
activations, held gradients or the output target dominate. `choose_schedule` estimates each candidate before the
scoring pass and picks the fastest that fits a budget; among candidates within `time_tolerance` of
the fastest (25 % by default), the one that needs least memory (memory is what runs out; a scoring pass that
takes a quarter longer still finishes).

Memory: the bytes a scoring pass adds to what is already resident.
  - Activations saved for backward are *measured*, not modelled: the scorer's target runs on the first 1 and 2
    calibration rows under a saved-tensor hook (no backward). The difference is the exact per-row cost of each
    block and of the rest (embeddings, head, target) whatever the architecture or attention kernel; weights and
    per-batch constants cancel. (Fake tensors would cost nothing, but transformers takes its tracing path on
    them — explicit [T, T] masks, repeated K/V — and would overstate long sequences.) The probe costs three
    rows' forward: ≈ 3 % of a 32-row scoring pass, ≈ 25 % of a 4-row one.
  - single pass:    rows × (Σ blocks + rest) + transient + the largest scored weight's gradient (each is
                    reduced and freed as it arrives)
  - checkpointing:  rows × (Σ block inputs + rest) + one block recomputed (rows × largest block) + transient
  - micro-batches:  the above for m rows + every scored weight's gradient, held until the last slice
  - transient:      what backward holds besides the saved tensors — gradients flowing through one block
                    (TRANSIENT × that block's activations) and the output target's [rows, T, chunk] logits
                    and their gradient.
Time (relative units, used only to rank candidates): forward + backward ≈ 6·P·N FLOPs for P block parameters and
N tokens (+ 2·P·N to recompute the blocks under checkpointing) and 4·H·N for the output head's H parameters (its
forward and the gradient to its input; it is never scored, so no weight gradient), plus, per micro-batch, β
FLOP-equivalents for each byte of weights — blocks and head — which every slice streams again (forward, both
backward products, gradient accumulation). The head matters for large vocabularies: Qwen2.5-0.5B's is 0.38× its
block parameters, and leaving it out made micro-batches look 2× cheaper than measured.
β is a machine balance: fitted on 2 CPU cores (results/bench/scoring.json); the CUDA value is an assumption,
not a measurement. Both constants are checked by `make bench` (predicted vs measured peak).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from ..sysmem import GIB, available_bytes, held_bytes

log = logging.getLogger(__name__)

SCHEDULES = ("auto", "manual")
# Gradients flowing back through one block relative to that block's saved activations: fitted to the measured
# peaks of results/bench/scoring.json (SmolLM2 32 × 128, Llama-3.2-1B shape 4 × 128; all within 20 %).
TRANSIENT = 1.0
# FLOP-equivalents per weight byte per extra micro-batch (machine balance; module doc).
WEIGHT_STREAM_COST = {"cpu": 120.0, "cuda": 300.0}
# Up to 25 % more estimated time for less memory: our one pass measured 0.65-0.80x the naive (official) scorer's
# time (results/bench/scoring.json), so the chosen schedule stays about as fast as the official scorer, while running
# out of memory loses the whole pass.
DEFAULT_TIME_TOLERANCE = 0.25


@dataclass(frozen=True)
class Schedule:
    micro_batch_size: int | None = None  # None: the whole batch in one pass
    checkpointing: bool = False

    def rows(self, batch: int) -> int:
        return batch if self.micro_batch_size is None else min(self.micro_batch_size, batch)

    def slices(self, batch: int) -> int:
        return math.ceil(batch / self.rows(batch))

    def describe(self, batch: int) -> str:
        parts = ["one pass" if self.slices(batch) == 1 else f"micro-batches of {self.rows(batch)} rows"]
        if self.checkpointing:
            parts.append("checkpointing")
        return " + ".join(parts)


@dataclass
class ActivationProfile:
    """Per-row bytes of a scoring pass on calibration rows of a given length (`measure_activations`)."""

    seq_len: int
    blocks: list[int]  # saved for backward inside each block, per row
    block_inputs: list[int]  # each block's tensor inputs, per row (what checkpointing keeps)
    rest: int  # saved outside the blocks (embeddings, head, target), per row
    head_transient: int  # the output target's logits and their gradient, per row (never saved)
    scored_grad_bytes: int  # every scored weight's gradient (held by micro-batching)
    largest_grad_bytes: int  # the largest one (what the single pass holds at a time)
    block_params: int  # parameters in the blocks (FLOP model)
    weight_bytes: int  # block and head weights, streamed once per micro-batch
    device: str = "cpu"
    head_params: int = 0  # the output head's parameters (FLOP model)

    def memory(self, schedule: Schedule, batch: int) -> int:
        rows = schedule.rows(batch)
        largest_block = max(self.blocks, default=0)
        transient = rows * (TRANSIENT * largest_block + self.head_transient)
        if schedule.checkpointing:
            saved = rows * (sum(self.block_inputs) + self.rest + largest_block)
        else:
            saved = rows * (sum(self.blocks) + self.rest)
        grads = self.scored_grad_bytes if schedule.slices(batch) > 1 else self.largest_grad_bytes
        return int(saved + transient + grads)

    def time(self, schedule: Schedule, batch: int) -> float:
        tokens = batch * self.seq_len
        flops = ((8 if schedule.checkpointing else 6) * self.block_params + 4 * self.head_params) * tokens
        beta = WEIGHT_STREAM_COST.get(self.device, WEIGHT_STREAM_COST["cpu"])
        return float(flops + beta * self.weight_bytes * (schedule.slices(batch) - 1))


@dataclass
class ScheduleChoice:
    """What `choose_schedule` decided and why; recorded in the plan (`extra["schedule"]`)."""

    schedule: Schedule
    estimate_bytes: int
    budget_bytes: int | None
    candidates: list[dict] = field(default_factory=list)

    def record(self) -> dict:
        return {"micro_batch_size": self.schedule.micro_batch_size, "checkpointing": self.schedule.checkpointing,
                "estimate_gib": round(self.estimate_bytes / GIB, 3),
                "budget_gib": None if self.budget_bytes is None else round(self.budget_bytes / GIB, 3),
                "candidates": self.candidates}


class MemoryBudgetError(MemoryError):
    """No schedule fits the budget; raised before the scoring pass (after the 3-row probe)."""


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()  # the storage itself, shared by all its views


def _saved_bytes_per_place(run: Callable[[int], object], blocks: list[torch.nn.Module], rows: int,
                           weights: set[int]):
    """(bytes saved for backward inside each block, outside them, the blocks' input bytes) for `run(rows)`.
    Each storage counts once, where it is first saved; `weights` (storage keys) are resident already."""
    where: list[int | None] = [None]
    saved: dict[int | None, int] = {}
    inputs = [0] * len(blocks)
    seen: set = set(weights)
    held: list[torch.Tensor] = []  # keeps counted storages alive (their addresses unique) until we return

    def pack(t):
        key = _storage_key(t)
        if key not in seen:
            seen.add(key)
            saved[where[0]] = saved.get(where[0], 0) + t.untyped_storage().nbytes()
        # Not `t` itself: a saved output packed as-is closes a cycle (tensor → grad_fn → packed tensor) that
        # Python's collector cannot see through autograd's C++ nodes, so every profile leaked its whole graph —
        # ~1.2 GiB per scored calibration draw on Qwen2.5-0.5B. This graph is never backpropagated.
        held.append(t.detach())
        return None

    def never_unpacked(_packed):
        raise RuntimeError("the memory profile's forward is never backpropagated")

    def enter(i):
        def hook(_module, args, kwargs):
            where[0] = i
            tensors = [x for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)]
            inputs[i] = sum(x.untyped_storage().nbytes() for x in {_storage_key(x): x for x in tensors}.values())
        return hook

    def leave(_module, _args, _out):
        where[0] = None

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(enter(i), with_kwargs=True))
        handles.append(block.register_forward_hook(leave))
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, never_unpacked):
            run(rows)  # the graph is freed on return, what it saved with `held`
    finally:
        for h in handles:
            h.remove()
    return [saved.get(i, 0) for i in range(len(blocks))], saved.get(None, 0), inputs


def measure_activations(run: Callable[[int], object], model: torch.nn.Module, blocks: list[torch.nn.Module],
                        seq_len: int, scored: Iterable[torch.Tensor], head_transient: int,
                        device: torch.device, head: torch.Tensor | None = None) -> ActivationProfile:
    """Profile the scorer's forward (`run(rows)`: its target on the first `rows` calibration rows of `seq_len`
    tokens) with the gradient flags already set as the scorer will run it: forwards of 1 and 2 rows. `head`: the
    output head's weight (time model)."""
    weights = {_storage_key(p) for p in model.parameters()}
    one = _saved_bytes_per_place(run, blocks, 1, weights)
    two = _saved_bytes_per_place(run, blocks, 2, weights)
    per_row = [max(b - a, 0) for a, b in zip(one[0], two[0])]
    inputs = [max(b - a, 0) for a, b in zip(one[2], two[2])]
    scored = list(scored)
    grad_bytes = [p.numel() * p.element_size() for p in scored]
    params = [p for block in blocks for p in block.parameters()]
    weights = {id(p): p for block in blocks for p in block.parameters()}
    if head is not None:
        weights[id(head)] = head
    return ActivationProfile(
        seq_len=seq_len, blocks=per_row, block_inputs=inputs, rest=max(two[1] - one[1], 0),
        head_transient=head_transient, scored_grad_bytes=sum(grad_bytes), largest_grad_bytes=max(grad_bytes, default=0),
        block_params=sum(p.numel() for p in params),
        weight_bytes=sum(p.numel() * p.element_size() for p in weights.values()), device=device.type,
        head_params=0 if head is None else head.numel(),
    )


def candidate_schedules(batch: int) -> list[Schedule]:
    """One pass or micro-batches of B/2, B/4, … 1 rows, each with and without checkpointing."""
    sizes, m = [], batch
    while True:
        if m not in sizes:
            sizes.append(m)
        if m == 1:
            break
        m = math.ceil(m / 2)
    return [Schedule(None if m == batch else m, ckpt) for ckpt in (False, True) for m in sizes]


def memory_budget(device: torch.device, cap_gib: float | None) -> int | None:
    """Bytes the scoring pass may add: the lesser of what the system has free and `cap_gib` minus what this process
    already holds (the cap bounds the process's peak: model included). None: unknown and uncapped."""
    free = available_bytes(device)
    capped = None if cap_gib is None else int(cap_gib * GIB) - held_bytes(device)
    options = [b for b in (free, capped) if b is not None]
    return min(options) if options else None


def choose_schedule(profile: ActivationProfile, batch: int, budget_bytes: int | None,
                    time_tolerance: float = DEFAULT_TIME_TOLERANCE) -> ScheduleChoice:
    """The fastest candidate that fits `budget_bytes` (None: anything fits); among those within `time_tolerance`
    of it, the least memory. No candidate fits: MemoryBudgetError naming the smallest budget that would."""
    if time_tolerance < 0:
        raise ValueError(f"time_tolerance must be >= 0, got {time_tolerance}")
    table = []
    for s in candidate_schedules(batch):
        table.append((s, profile.memory(s, batch), profile.time(s, batch)))
    fits = [row for row in table if budget_bytes is None or row[1] <= budget_bytes]
    if not fits:
        s, need, _ = min(table, key=lambda row: row[1])
        raise MemoryBudgetError(
            f"no scoring schedule fits the memory budget of {budget_bytes / GIB:.2f} GiB beyond what is resident: "
            f"the smallest, {s.describe(batch)}, needs an estimated {need / GIB:.2f} GiB. Raise "
            f"pruner.memory_budget_gib (or free memory), or use fewer or shorter calibration rows "
            f"(batch {batch} × {profile.seq_len} tokens)")
    fastest = min(t for _, _, t in fits)
    near = [row for row in fits if row[2] <= fastest * (1 + time_tolerance)]
    best = min(near, key=lambda row: (row[1], row[2]))
    candidates = [{"micro_batch_size": s.micro_batch_size, "checkpointing": s.checkpointing,
                   "estimate_gib": round(m / GIB, 3), "relative_time": round(t / fastest, 3),
                   "fits": budget_bytes is None or m <= budget_bytes} for s, m, t in table]
    return ScheduleChoice(best[0], best[1], budget_bytes, candidates)


def log_choice(choice: ScheduleChoice, batch: int) -> None:
    budget = "unknown" if choice.budget_bytes is None else f"{choice.budget_bytes / GIB:.2f} GiB"
    log.info("scoring schedule: %s — estimated %.2f GiB beyond resident (budget %s)",
             choice.schedule.describe(batch), choice.estimate_bytes / GIB, budget)
    for c in choice.candidates:
        log.debug("  candidate %s", c)


__all__ = ["SCHEDULES", "Schedule", "ActivationProfile", "ScheduleChoice", "MemoryBudgetError",
           "measure_activations", "candidate_schedules", "memory_budget", "choose_schedule", "log_choice"]
