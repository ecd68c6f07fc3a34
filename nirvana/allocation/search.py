"""Searched allocation (beyond the paper): how many units each layer keeps, chosen by an evolutionary search with
the KL to the dense model on the probe as fitness (docs/method.md, "Beyond the paper: searched allocation").

NIRVANA decides *which* units of a layer matter by their saliency and *how many* each layer keeps by one global
threshold per module kind, split by γ. The strongest structured-pruning results without retraining since then search
the per-layer sparsities instead: EvoPress (Sieberling et al., 2024: evolutionary search over layer-wise compression
levels, level-switch mutations at a fixed total, KL fitness, multi-step selection) and Týr-the-Pruner (NeurIPS 2025:
a search over per-layer sparsities with a KL fitness on calibration text). This module is that search over the
per-layer numbers of kept attention groups and MLP neurons, with the units inside each layer still ranked by the
method's own scores. It is written from the papers' descriptions; no code of theirs is used.

- **Space.** Per layer, kept attention groups a_l ∈ [1, N_a] and kept MLP neurons m_l ∈ [r, N_m], a multiple of
  r = round_to (or N_m itself; below r only where the starting plan already is). A layer's kept units are its
  starting plan's, minus its lowest-scoring kept units or plus its highest-scoring pruned ones (`decode`), so the
  starting allocation decodes to the starting plan exactly.
- **Budget.** Every candidate removes exactly the starting plan's number of attention + MLP *weights* (the budget
  NIRVANA's closed form counts): every mutation moves whole units between layers at a fixed total. Qwen2's q/k/v
  biases leave with their group without entering that count (as in NIRVANA's own budget), so only an attention ↔
  MLP exchange changes the removed *parameters*, by (n_rep + 2)·head_dim biases per group moved (a group's weights
  are 2·d_model·(n_rep + 1)·head_dim: far under 0.1 % of them).
- **Mutations.** (EvoPress's level switch, at a fixed total.) `mlp`: k·r neurons (k ≤ mlp_step/r) go from one layer's
  MLP to another's; `attention`: one group from one layer to another; `exchange`: attention ↔ MLP at the exact cost
  ratio — the smallest whole numbers of groups and neurons of equal weight count, n_g·c_a = n_m·c_m with n_m a
  multiple of r (`exchange_quantum` at r = 8: 3 groups ↔ 512 neurons on SmolLM2, 3 ↔ 1280 on Llama-3.1-8B); off
  where that needs more than a quarter of the model's groups. An offspring is 1 to `max_moves` such moves on its parent.
- **Selection.** A (1 + λ) scheme with multi-step selection: each generation draws λ = `offspring` children of the
  current best, rates all on the first `windows[0]` probe windows, keeps the best `survivors[0]`, rates them on
  `windows[1]` windows, …; the best child on the last stage's windows replaces the parent only if its KL there is
  lower (elitism: the search never ends worse than its start on that fitness).
- **Seeded and resumable.** Generation g's random draws come from Random(f"{seed}:{g}"), so the search is a function
  of its configuration and its state after each generation, which is saved (`state_path`); a rerun resumes after
  the last saved generation and ends exactly where an uninterrupted run ends (and a longer run extends it).
- **Trace.** Per generation: the best's fitness, whether it changed, the candidates and plan-batch forwards rated,
  the probe tokens used, wall seconds, and a held-out report of the best (`report`: its perplexity on the first
  windows of an evaluation set, never used for selection) — whether the search over-fits the probe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters import LayerUnits
from ..atomic import write_json
from ..schema import at_least, identity, unhashed
from ..scoring.units import UnitScores

log = logging.getLogger(__name__)

Kept = list[tuple[list[int], list[int]]]  # per layer: (kept attention groups, kept MLP neurons), sorted indices
MUTATIONS = ("mlp", "attention", "exchange")


@dataclass
class SearchConfig:
    """`allocator: search` (conf/allocation/search.yaml): the evolutionary search's settings. A generation rates
    `offspring` children on `windows[0]` probe windows and `survivors[0]` of them on `windows[1]`: with the defaults
    256 window-forwards of the pruned model per generation (its measured cost: docs/results/search.md)."""

    generations: int = 30
    offspring: int = 8  # λ: children of the current best per generation
    survivors: list[int] = field(default_factory=lambda: [2])  # children kept after each stage but the last
    windows: list[int] = field(default_factory=lambda: [16, 64])  # probe windows rated per stage (whole batches)
    max_moves: int = 3  # mutations per child: 1..max_moves
    mlp_step: int | None = None  # most neurons one MLP move shifts (null: N_m/16, a multiple of round_to)
    exchange: bool = True  # attention ↔ MLP moves at the exact cost ratio
    seed: int = 0
    # the held-out report (never used for selection): the first windows of an evaluation set, at its window length
    heldout_windows: int = unhashed(4)  # 0: no report
    heldout_set: str | None = unhashed(None)  # a perplexity set of the run's eval (null: its first)
    heldout_seq_len: int | None = unhashed(None)  # null: the run's first perplexity window length

    def __post_init__(self) -> None:
        self.survivors, self.windows = list(self.survivors), list(self.windows)
        at_least("pruner.search.generations", self.generations, 0)
        at_least("pruner.search.offspring", self.offspring, 1)
        at_least("pruner.search.max_moves", self.max_moves, 1)
        if len(self.windows) != len(self.survivors) + 1:
            raise ValueError(f"pruner.search.windows gives the probe windows of each selection stage and survivors the "
                             f"children kept after each stage but the last: {len(self.windows)} stages need "
                             f"{len(self.windows) - 1} survivor counts, got {self.survivors}")
        if any(w < 1 for w in self.windows) or self.windows != sorted(self.windows):
            raise ValueError(f"pruner.search.windows must be ≥ 1 and non-decreasing, got {self.windows}")
        if any(not 1 <= s <= self.offspring for s in self.survivors) or self.survivors != sorted(self.survivors,
                                                                                                 reverse=True):
            raise ValueError(f"pruner.search.survivors must be non-increasing and in [1, offspring={self.offspring}], "
                             f"got {self.survivors}")
        at_least("pruner.search.mlp_step", self.mlp_step, 1)
        at_least("pruner.search.heldout_windows", self.heldout_windows, 0)


@dataclass
class Allocation:
    """Kept attention groups and MLP neurons per layer."""

    attention: list[int]
    mlp: list[int]

    def key(self) -> tuple:
        return tuple(self.attention), tuple(self.mlp)

    def copy(self) -> Allocation:
        return Allocation(list(self.attention), list(self.mlp))


class SearchSpace:
    """The allocations reachable from a starting plan at its exact weight budget, and how each decodes to units."""

    def __init__(self, layers: list[LayerUnits], scores: UnitScores, start: Kept, round_to: int,
                 mlp_step: int | None = None, exchange: bool = True):
        for layer in layers:
            if len(layer.attention.parts()) != 1 or len(layer.mlp.parts()) != 1:
                raise ValueError(f"the searched allocation handles layers whose attention and MLP are one module each; "
                                 f"layer {layer.index} has parts {layer.attention.parts()} / {layer.mlp.parts()} "
                                 f"(encoder-decoder models: use allocator=global)")
        self.layers, self.scores, self.start_kept, self.r = layers, scores, start, round_to
        self.n_att = [layer.attention.n_units for layer in layers]
        self.n_mlp = [layer.mlp.n_units for layer in layers]
        self.c_att = [layer.attention.weight_cost for layer in layers]
        self.c_mlp = [layer.mlp.weight_cost for layer in layers]
        self.start = Allocation([len(a) for a, _ in start], [len(m) for _, m in start])
        # the narrowest MLP a layer may get: one round_to step, or what the starting plan gives it when that is less
        # (FLAP may empty a layer's MLP; the search may keep it so but never empties another)
        self.min_mlp = [min(round_to, n, m) for n, m in zip(self.n_mlp, self.start.mlp, strict=True)]
        for i, (a, m) in enumerate(zip(self.start.attention, self.start.mlp, strict=True)):
            if a < 1 or not self.valid_width(i, m):
                raise ValueError(f"the starting plan's layer {i} keeps {a} groups / {m} neurons: outside the search "
                                 f"space (≥ 1 group; MLP width a multiple of round_to={round_to} or the dense width)")
        median = sorted(self.n_mlp)[len(self.n_mlp) // 2]
        step = mlp_step if mlp_step is not None else max(round_to, round(median / 16 / round_to) * round_to)
        self.mlp_units = max(1, step // round_to)  # an MLP move shifts k·r neurons, 1 ≤ k ≤ mlp_units
        self.quantum = exchange_quantum(self.c_att, self.c_mlp, round_to, sum(self.n_att)) if exchange else None
        # the order each layer gives and takes units in: kept units by ascending score (dropped first), pruned units
        # by descending score (added first); ties by index
        self.order = [(self._order(scores.attention[i], kept_a), self._order(scores.mlp[i], kept_m))
                      for i, (kept_a, kept_m) in enumerate(start)]

    @staticmethod
    def _order(scores: torch.Tensor, kept: list[int]) -> tuple[list[int], list[int]]:
        s = scores.tolist()
        keep = set(kept)
        drop_first = sorted(kept, key=lambda u: (s[u], u))
        add_first = sorted((u for u in range(len(s)) if u not in keep), key=lambda u: (-s[u], u))
        return drop_first, add_first

    def valid_width(self, i: int, m: int) -> bool:
        n = self.n_mlp[i]
        return self.min_mlp[i] <= m <= n and (m % self.r == 0 or m == n)

    def removed_weights(self, x: Allocation) -> int:
        return sum((na - a) * ca + (nm - m) * cm for na, a, ca, nm, m, cm in
                   zip(self.n_att, x.attention, self.c_att, self.n_mlp, x.mlp, self.c_mlp, strict=True))

    def decode(self, x: Allocation) -> Kept:
        """The units each layer keeps: its starting plan's, minus the lowest-scoring or plus the highest-scoring."""
        out: Kept = []
        for i, (kept_a, kept_m) in enumerate(self.start_kept):
            units = []
            for count, kept, (drop_first, add_first) in ((x.attention[i], kept_a, self.order[i][0]),
                                                         (x.mlp[i], kept_m, self.order[i][1])):
                if count <= len(kept):
                    chosen = set(drop_first[len(kept) - count:])
                else:
                    chosen = set(kept) | set(add_first[: count - len(kept)])
                units.append(sorted(chosen))
            out.append((units[0], units[1]))
        return out

    # --- mutations: each keeps the removed weights exactly ------------------------------------------------
    def mutate(self, parent: Allocation, rng: random.Random, max_moves: int) -> Allocation | None:
        child = parent.copy()
        kinds = [k for k in MUTATIONS if k != "exchange" or self.quantum is not None]
        for _ in range(rng.randint(1, max_moves)):
            for _ in range(20):  # a move the allocation has no room for is drawn again
                if getattr(self, f"_{rng.choice(kinds)}")(child, rng):
                    break
        return None if child.key() == parent.key() else child

    def _mlp(self, x: Allocation, rng: random.Random) -> bool:
        i, j = rng.sample(range(len(self.layers)), 2) if len(self.layers) > 1 else (0, 0)
        amount = rng.randint(1, self.mlp_units) * self.r
        if i == j or not (self.valid_width(i, x.mlp[i] - amount) and self.valid_width(j, x.mlp[j] + amount)):
            return False
        if self.c_mlp[i] != self.c_mlp[j]:
            return False
        x.mlp[i] -= amount
        x.mlp[j] += amount
        return True

    def _attention(self, x: Allocation, rng: random.Random) -> bool:
        i, j = rng.sample(range(len(self.layers)), 2) if len(self.layers) > 1 else (0, 0)
        if i == j or x.attention[i] <= 1 or x.attention[j] >= self.n_att[j] or self.c_att[i] != self.c_att[j]:
            return False
        x.attention[i] -= 1
        x.attention[j] += 1
        return True

    def _exchange(self, x: Allocation, rng: random.Random) -> bool:
        """n_g groups ↔ n_m neurons (one quantum), spread over layers with room; all or nothing."""
        n_g, n_m = self.quantum
        y = x.copy()
        to_mlp = rng.random() < 0.5
        layers = list(range(len(self.layers)))
        for _ in range(n_g):  # groups leave (to_mlp) or arrive, one at a time
            room = [i for i in layers if (y.attention[i] > 1 if to_mlp else y.attention[i] < self.n_att[i])]
            if not room:
                return False
            y.attention[rng.choice(room)] += -1 if to_mlp else 1
        left = n_m
        while left:  # neurons arrive (to_mlp) or leave, in pieces of k·r
            piece = min(left, rng.randint(1, self.mlp_units) * self.r)
            room = [i for i in layers if self.valid_width(i, y.mlp[i] + (piece if to_mlp else -piece))]
            if not room:
                return False
            y.mlp[rng.choice(room)] += piece if to_mlp else -piece
            left -= piece
        x.attention, x.mlp = y.attention, y.mlp
        return True


def exchange_quantum(c_att: list[int], c_mlp: list[int], round_to: int, total_groups: int) -> tuple[int, int] | None:
    """(groups, neurons) of equal weight count — the smallest n_g·c_a = n_m·c_m with n_m a multiple of round_to — or
    None where the layers' unit costs differ or the quantum needs more than a quarter of the model's groups."""
    if len(set(c_att)) != 1 or len(set(c_mlp)) != 1:
        return None
    c_a, step = c_att[0], c_mlp[0] * round_to
    both = c_a * step // math.gcd(c_a, step)
    n_g, n_m = both // c_a, both // c_mlp[0]
    return (n_g, n_m) if n_g <= max(1, total_groups // 4) else None


# --- the search ---------------------------------------------------------------------------------------------
Rate = Callable[[list[Kept], int], list[float]]  # (candidates' kept units, probe windows) → their KLs
Report = Callable[[Kept], dict]  # the held-out report of one candidate (never used for selection)
Spent = Callable[[], dict]  # cumulative probe cost so far: {"plan_batches", "tokens", "rated"}


def search_key(config: SearchConfig, space: SearchSpace, context: dict) -> str:
    """What a search's result depends on — its settings but the number of generations (a longer search extends a
    shorter one), the starting plan, the scores, the round_to, and `context` (model, probe, compensation) — as the
    name of its state file."""
    settings = {k: v for k, v in identity(config).items() if k != "generations"}
    h = hashlib.sha256(json.dumps({"settings": settings, "round_to": space.r, "start": space.start_kept,
                                   "context": context}, sort_keys=True, default=str).encode())
    for tensor in (*space.scores.attention, *space.scores.mlp):
        h.update(tensor.detach().cpu().double().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def search_allocation(space: SearchSpace, config: SearchConfig, rate: Rate, report: Report | None = None,
                      spent: Spent | None = None, state_path: str | Path | None = None,
                      progress: bool = True) -> tuple[Kept, dict]:
    """(the best allocation's kept units, the search's record for `plan.extra["search"]`). `rate(kept_list, n)`: the
    candidates' KLs on the first n probe windows; `report(kept)`: the held-out report of a generation's best;
    `spent()`: the probe's cumulative cost; `state_path`: where the state is saved after every generation (resumed
    from when it exists and belongs to this search)."""
    fitness_windows = config.windows[-1]
    spent = spent or (lambda: {})
    path = Path(state_path) if state_path is not None else None
    state = json.loads(path.read_text()) if path is not None and path.is_file() else None
    budget = space.removed_weights(space.start)
    if state is not None:  # resume after the last saved generation (a shorter search: after its last one)
        done = min(len(state["trace"]) - 1, config.generations)
        trace, parents = state["trace"][: done + 1], state["parents"][: done + 1]
        parent, fitness = Allocation(**parents[-1]), trace[-1]["kl"]
        if space.removed_weights(parent) != budget:
            raise RuntimeError(f"search state {path} breaks the budget ({space.removed_weights(parent)} ≠ {budget})")
        log.info("searched allocation: resuming after generation %d of %d (KL %.5f)", done, config.generations, fitness)
        resumed_from = done
    else:
        t0, before = time.perf_counter(), spent()
        (fitness,) = rate([space.decode(space.start)], fitness_windows)
        parent, done, resumed_from = space.start.copy(), 0, None
        trace = [_entry(0, fitness, True, 1, before, spent(), t0, report, space, parent)]
        parents = [dataclasses.asdict(parent)]
        _save(path, trace, parents)
    bar = range(done + 1, config.generations + 1)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="searched allocation", initial=done, total=config.generations)
    for g in bar:
        t0, before = time.perf_counter(), spent()
        rng = random.Random(f"{config.seed}:{g}")
        children, seen = [], {parent.key()}
        for _ in range(20 * config.offspring):
            if len(children) == config.offspring:
                break
            child = space.mutate(parent, rng, config.max_moves)
            if child is not None and child.key() not in seen:
                seen.add(child.key())
                children.append(child)
        pool, kls = children, []
        for stage, windows in enumerate(config.windows):
            kls = rate([space.decode(c) for c in pool], windows)
            ranked = sorted(range(len(pool)), key=lambda i: (kls[i], i))
            if stage < len(config.survivors):
                pool, kls = [pool[i] for i in ranked[: config.survivors[stage]]], [kls[i] for i in
                                                                                    ranked[: config.survivors[stage]]]
        best = min(range(len(pool)), key=lambda i: (kls[i], i)) if pool else None
        accepted = best is not None and kls[best] < fitness
        if accepted:
            parent, fitness = pool[best], kls[best]
            assert space.removed_weights(parent) == budget
        entry = _entry(g, fitness, accepted, len(children), before, spent(), t0, report if accepted else None, space,
                       parent)
        if not accepted and trace and "heldout" in trace[-1]:
            entry["heldout"] = trace[-1]["heldout"]  # the same best: the same report
        trace.append(entry)
        parents.append(dataclasses.asdict(parent))
        _save(path, trace, parents)
        log.info("generation %d: KL %.5f on %d windows%s", g, fitness, fitness_windows, " (new best)" if accepted else "")
    record = {"config": dataclasses.asdict(config), "fitness_windows": fitness_windows, "start_fitness": trace[0]["kl"],
              "fitness": fitness, "removed_weights": budget, "exchange_quantum": space.quantum,
              "mlp_move": space.mlp_units * space.r, "start": dataclasses.asdict(space.start),
              "best": dataclasses.asdict(parent), "resumed_from": resumed_from, "trace": trace}
    return space.decode(parent), record


def _entry(g: int, kl: float, accepted: bool, candidates: int, before: dict, after: dict, t0: float,
           report: Report | None, space: SearchSpace, best: Allocation) -> dict:
    entry = {"generation": g, "kl": kl, "accepted": accepted, "candidates": candidates,
             **{k: after.get(k, 0) - before.get(k, 0) for k in ("rated", "plan_batches", "tokens")}}
    if report is not None:
        entry["heldout"] = report(space.decode(best))
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    return entry


def _save(path: Path | None, trace: list, parents: list) -> None:
    """The search after each generation: its trace and the best allocation after each generation (so a shorter
    search with the same settings reads its result from a longer one's state)."""
    if path is not None:
        write_json(path, {"generations": len(trace) - 1, "trace": trace, "parents": parents})
