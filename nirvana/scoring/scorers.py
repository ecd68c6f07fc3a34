"""Unit saliency: how much each attention group and MLP neuron matters.

Every scorer returns `UnitScores`: one float64 vector per layer and module kind, indexed like the adapter's
units. Scorers are interchangeable objects; allocation only ever sees these vectors.

The NIRVANA scorer (docs/method.md §1) is first order on the model *output*, not the loss: under Adam the
training dynamics follow sign-gradient descent, and removing weight W moves the output by about -(df/dW)·W,
so a weight's saliency is |df/dW ⊙ W| and a unit's is the L1 sum over the weights it owns.

Memory (benchmarked by `make bench`, results/bench/):
  - Gradients are never all held: each weight's gradient is reduced to its unit scores the moment autograd
    finishes it (a post-accumulate-grad hook) and freed, so at most a few parameters' gradients live at a
    time instead of the whole model's (the official code holds them all). |g ⊙ W| needs g only for W itself,
    so the scores are those of the full-gradient computation.
  - The output target never builds the [B, T, V] logits or their gradient: the LM head is applied to
    `vocab_chunk` vocabulary rows at a time and only the max over T of each chunk is kept (max's backward
    needs only the argmax indices), so the logits cost B·T·vocab_chunk floats instead of B·T·V.
  - `checkpointing=True` keeps only each block's input during the forward pass and recomputes the block in
    backward: activation memory falls from O(L·B·T·width) to O(B·T·d·L + one block), for about one extra
    forward pass of time.
  - `micro_batch_size=m` runs the batch in slices of m rows. The official target is a mean over the batch,
    f = Σ_i (m_i/B)·f_i, so ∂f/∂W is the sum of the slices' gradients — but |Σ_i g_i ⊙ W| ≠ Σ_i |g_i ⊙ W|:
    scoring each slice and adding the scores would be a different (larger, and differently ranked)
    criterion. We therefore accumulate the gradients themselves across slices and take |g ⊙ W| once at the
    end; this is exact up to floating-point summation order, and it must hold every scored weight's
    gradient until the last slice (+1× the prunable weights), while activations shrink by B/m. It pays off
    when activations dominate (small models, long calibration batches on CPU); with checkpointing the
    single pass is usually the better trade. Exactness needs every row of the batch to carry the same
    weight in the target: true for all our targets, because calibration batches are rectangular.
  - `schedule="auto"` (the default) chooses micro-batching and checkpointing itself from an estimate made before
    the scoring pass (nirvana.scoring.schedule); an explicit `micro_batch_size` or `checkpointing=True` wins,
    and `schedule="manual"` runs exactly the options given.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch

from ..adapters import MODULE_KINDS, ModelAdapter, ParamSlice
from .schedule import (
    DEFAULT_TIME_TOLERANCE,
    SCHEDULES,
    ActivationProfile,
    Schedule,
    ScheduleChoice,
    choose_schedule,
    log_choice,
    measure_activations,
    memory_budget,
)
from .targets import chunked_output_max_target, output_max_target
from .units import UnitScores, add_weight_scores


def gradient_saliency(p: torch.Tensor) -> torch.Tensor:
    """|∂f/∂W ⊙ W| per weight, from the gradient autograd left in `p.grad` (fp32 whatever the model dtype)."""
    return (p.grad.float() * p.detach().float()).abs()


def scored_parameters(adapter: ModelAdapter, include_bias: bool):
    """id(param) → (param, [(kind, layer, n_units, slice)]): which unit scores each parameter feeds.

    Biases (Qwen2's q/k/v) are removed with their unit but, as in the official code, not scored unless
    `include_bias`: the official criterion sums over weight matrices only.
    """
    owners: dict[int, tuple[torch.nn.Parameter, list[tuple[str, int, int, ParamSlice]]]] = {}
    for layer in adapter.layers():
        for kind in MODULE_KINDS:
            group = layer.group(kind)
            for s in group.slices:
                if s.param_name == "bias" and not include_bias:
                    continue
                owners.setdefault(id(s.param), (s.param, []))[1].append((kind, layer.index, group.n_units, s))
    return owners


class Scorer:
    """Interface: `score(adapter, input_ids) -> UnitScores`."""

    name = "base"
    needs_calibration = True

    def __init__(self, include_bias: bool = False):
        self.include_bias = include_bias

    def score(self, adapter: ModelAdapter, input_ids: torch.Tensor | None) -> UnitScores:
        raise NotImplementedError


class MagnitudeScorer(Scorer):
    """S = |W| with NIRVANA's aggregation (the official code's `magnitude` variant)."""

    name = "magnitude"
    needs_calibration = False

    def score(self, adapter, input_ids=None):
        scores = UnitScores.zeros(adapter)
        for p, entries in scored_parameters(adapter, self.include_bias).values():
            add_weight_scores(scores, p.detach().float().abs(), entries)
        return scores


@contextmanager
def gradients_for(model: torch.nn.Module, params: dict[int, torch.Tensor]):
    """Inside: only `params` (id → tensor) require gradients, none is held, the model is in eval mode.
    Embeddings, norms and the LM head are never pruned, so they need no gradient."""
    saved_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(id(p) in params)
            p.grad = None
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved_flags[name])
            p.grad = None
        model.train(was_training)


class GradientSaliencyScorer(Scorer):
    """|∂f/∂W ⊙ W| for a scalar target f of the calibration forward pass, gradients freed as they arrive.

    `micro_batch_size` and `checkpointing` trade time for memory without changing the criterion (module
    docstring); under `schedule="auto"` they are chosen to fit `memory_budget_gib` (None: what the system has
    free) unless set explicitly. The target must be a mean over the batch rows (all of ours are)."""

    name = "gradient"

    def __init__(self, include_bias: bool = False, micro_batch_size: int | None = None, checkpointing: bool = False,
                 schedule: str = "auto", memory_budget_gib: float | None = None,
                 time_tolerance: float = DEFAULT_TIME_TOLERANCE):
        super().__init__(include_bias)
        if micro_batch_size is not None and int(micro_batch_size) < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if memory_budget_gib is not None and not float(memory_budget_gib) > 0:
            raise ValueError(f"memory_budget_gib must be > 0 or None, got {memory_budget_gib}")
        if not float(time_tolerance) >= 0:
            raise ValueError(f"time_tolerance must be >= 0, got {time_tolerance}")
        self.micro_batch_size = None if micro_batch_size is None else int(micro_batch_size)
        self.checkpointing = bool(checkpointing)
        self.schedule = schedule
        self.memory_budget_gib = None if memory_budget_gib is None else float(memory_budget_gib)
        self.time_tolerance = float(time_tolerance)
        self.choice: ScheduleChoice | None = None  # set by `resolve_schedule` under schedule=auto
        self._choice_shape: tuple[int, int] | None = None

    @property
    def automatic(self) -> bool:
        """Whether the schedule is chosen here: auto, and neither memory option set by the user."""
        return self.schedule == "auto" and self.micro_batch_size is None and not self.checkpointing

    def target(self, adapter: ModelAdapter, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head_transient_bytes(self, adapter: ModelAdapter, seq_len: int) -> int:
        """Per row: the output logits that the target builds and frees (and their gradient), never saved."""
        return 2 * 4 * seq_len * adapter.vocab_size()

    def memory_profile(self, adapter: ModelAdapter, input_ids: torch.Tensor) -> ActivationProfile:
        """What a scoring pass on a batch of this shape holds, per row and in total (nirvana.scoring.schedule): forwards
        of its first 1 and 2 rows, no backward."""
        seq_len = input_ids.shape[1]
        owners = scored_parameters(adapter, self.include_bias)
        prunable = {pid: p for pid, (p, _) in owners.items()}
        with gradients_for(adapter.model, prunable):
            return measure_activations(
                lambda rows: self.target(adapter, input_ids[:1].expand(rows, -1) if len(input_ids) < rows else input_ids[:rows]),
                adapter.model, adapter.blocks(), seq_len,
                prunable.values(), self.head_transient_bytes(adapter, seq_len), input_ids.device,
                head=adapter.output_head_weight())

    def resolve_schedule(self, adapter: ModelAdapter, input_ids: torch.Tensor) -> Schedule:
        """The schedule `score` will run on a batch of this shape: the user's, or under auto the estimate's
        choice (logged, kept in `self.choice`). Raises MemoryBudgetError before the scoring pass when none
        fits. Costs forwards of 3 rows (the probe)."""
        if not self.automatic:
            return Schedule(self.micro_batch_size, self.checkpointing)
        batch, seq_len = input_ids.shape
        if self.choice is not None and self._choice_shape == (batch, seq_len):
            return self.choice.schedule
        profile = self.memory_profile(adapter, input_ids)
        budget = memory_budget(input_ids.device, self.memory_budget_gib)
        self.choice = choose_schedule(profile, batch, budget, self.time_tolerance)
        self._choice_shape = (batch, seq_len)
        log_choice(self.choice, batch)
        return self.choice.schedule

    def score(self, adapter, input_ids):
        schedule = self.resolve_schedule(adapter, input_ids)
        model = adapter.model
        scores = UnitScores.zeros(adapter)
        owners = scored_parameters(adapter, self.include_bias)
        prunable = {pid: p for pid, (p, _) in owners.items()}
        batch = input_ids.shape[0]
        rows = schedule.rows(batch)
        slices = [slice(i, min(i + rows, batch)) for i in range(0, batch, rows)]

        def reduce_and_free(p: torch.Tensor) -> None:
            add_weight_scores(scores, gradient_saliency(p), owners[id(p)][1])
            p.grad = None

        hooks: list[Callable] = []
        checkpointing = adapter.activation_checkpointing() if schedule.checkpointing else nullcontext()
        try:
            with gradients_for(model, prunable):
                single_pass = len(slices) == 1
                if single_pass:  # each gradient is final when it arrives → reduce and free it
                    hooks = [p.register_post_accumulate_grad_hook(reduce_and_free) for p in prunable.values()]
                with torch.enable_grad(), checkpointing:
                    for part_rows in slices:
                        part = input_ids[part_rows]
                        f = self.target(adapter, part)
                        if not single_pass:
                            f = f * (part.shape[0] / batch)  # f = Σ (m_i / B) f_i for a mean over rows
                        f.backward()
                if not single_pass:  # gradients summed over the slices: score them once, now
                    for p in prunable.values():
                        if p.grad is not None:
                            reduce_and_free(p)
        finally:
            for h in hooks:
                h.remove()
        return scores


class NirvanaScorer(GradientSaliencyScorer):
    """The paper's criterion with the official code's target f (docs/method.md §1).

    `vocab_chunk`: LM-head rows per chunk of the memory-frugal target (None = the plain [B, T, V] logits)."""

    name = "nirvana"

    def __init__(self, include_bias: bool = False, micro_batch_size: int | None = None, checkpointing: bool = False,
                 vocab_chunk: int | None = 8192, **schedule):
        super().__init__(include_bias, micro_batch_size, checkpointing, **schedule)
        if vocab_chunk is not None and int(vocab_chunk) < 1:
            raise ValueError(f"vocab_chunk must be >= 1 or None, got {vocab_chunk}")
        self.vocab_chunk = None if vocab_chunk is None else int(vocab_chunk)

    def target(self, adapter, input_ids):
        if self.vocab_chunk is not None:
            split = adapter.hidden_and_head(input_ids)
            if split is not None:  # None: the adapter's logits are not a plain head(hidden) (e.g. T5)
                return chunked_output_max_target(*split, self.vocab_chunk)
        return output_max_target(adapter.logits(input_ids))

    def head_transient_bytes(self, adapter, seq_len):
        chunked = self.vocab_chunk is not None and adapter.logits_are_head_of_hidden
        width = min(self.vocab_chunk, adapter.vocab_size()) if chunked else adapter.vocab_size()
        return 2 * 4 * seq_len * width


class TaylorScorer(GradientSaliencyScorer):
    """LLM-Pruner's first-order Taylor importance: |∂L/∂W ⊙ W| with L the LM loss, summed per unit.

    The only difference from NIRVANA's scorer is the target (loss instead of output), which is the point
    of the paper's comparison. The adapter defines the loss: next-token CE for decoders, the decoder's CE
    on the continuation for encoder-decoders (nirvana.adapters.t5).
    """

    name = "taylor"

    def target(self, adapter, input_ids):
        return adapter.lm_loss(input_ids)


class RandomScorer(Scorer):
    """Seeded i.i.d. uniform unit scores: the floor every criterion must beat."""

    name = "random"
    needs_calibration = False

    def __init__(self, include_bias: bool = False, seed: int = 0):
        super().__init__(include_bias)
        self.seed = seed

    def score(self, adapter, input_ids=None):
        g = torch.Generator().manual_seed(self.seed)
        layers = adapter.layers()
        return UnitScores(
            attention=[torch.rand(layer.attention.n_units, generator=g, dtype=torch.float64) for layer in layers],
            mlp=[torch.rand(layer.mlp.n_units, generator=g, dtype=torch.float64) for layer in layers],
        )


SCORERS: dict[str, type[Scorer]] = {
    "nirvana": NirvanaScorer,
    "magnitude": MagnitudeScorer,
    "taylor": TaylorScorer,
    "random": RandomScorer,
}


def make_scorer(name: str, **kwargs) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose one of {sorted(SCORERS)}")
    return SCORERS[name](**kwargs)


__all__ = [
    "Scorer", "MagnitudeScorer", "NirvanaScorer", "TaylorScorer", "RandomScorer", "make_scorer",
    "SCORERS",
]
