"""The automatic scoring schedule (nirvana/scoring/schedule.py): its memory estimate, its choice, and that the choice
never changes the plan."""

import gc

import pytest
import torch

from nirvana.adapters import get_adapter
from nirvana.pruners import compute_plan
from nirvana.scoring.schedule import (
    DEFAULT_TIME_TOLERANCE,
    ActivationProfile,
    MemoryBudgetError,
    Schedule,
    candidate_schedules,
    choose_schedule,
    memory_budget,
)
from nirvana.scoring.scorers import NirvanaScorer, TaylorScorer, gradients_for, scored_parameters
from nirvana.sysmem import GIB
from nirvana.tiny import tiny_model, tiny_t5_model


def kept(plan):
    return [(lp.kept_groups, lp.kept_neurons) for lp in plan.layers]


def real_saved_bytes(scorer, adapter, ids) -> int:
    """Bytes autograd saves for backward in a forward of the scorer's target on `ids` (each storage once,
    weights excluded) — what the estimate must predict."""
    owners = scored_parameters(adapter, scorer.include_bias)
    prunable = {pid: p for pid, (p, _) in owners.items()}
    weights = {p.untyped_storage().data_ptr() for p in adapter.model.parameters()}
    seen, held = set(), []  # held: counted storages stay alive (addresses unique) without a cycle to the graph
    total = [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and ptr not in weights:
            seen.add(ptr)
            total[0] += t.untyped_storage().nbytes()
        held.append(t.detach())

    with gradients_for(adapter.model, prunable), torch.enable_grad(), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
        scorer.target(adapter, ids)
    return total[0]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("scorer_cls", [NirvanaScorer, TaylorScorer])
def test_profile_predicts_what_a_larger_batch_saves(family, scorer_cls):
    model = tiny_model(family)
    adapter = get_adapter(model)
    scorer = scorer_cls()
    ids = torch.randint(0, adapter.vocab_size(), (6, 24), generator=torch.Generator().manual_seed(0))
    profile = scorer.memory_profile(adapter, ids)
    per_row = sum(profile.blocks) + profile.rest
    # Six rows save five rows' worth more than one row does (up to views of the input ids: the labels of one
    # row are a view of the whole batch's storage, of more rows a copy).
    grown = real_saved_bytes(scorer, adapter, ids) - real_saved_bytes(scorer, adapter, ids[:1])
    assert per_row * 5 == pytest.approx(grown, rel=1e-2)
    assert profile.blocks and min(profile.blocks) > 0 and len(profile.blocks) == len(adapter.blocks())
    assert profile.scored_grad_bytes == sum(p.numel() * 4 for p, _ in scored_parameters(adapter, False).values())


def test_profile_probes_two_rows_and_leaves_the_model_as_it_was(calib_ids):
    model = tiny_model("llama")
    adapter = get_adapter(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    rows = []
    handle = adapter.blocks()[0].register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    NirvanaScorer().memory_profile(adapter, calib_ids)
    handle.remove()
    assert rows == [1, 2]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_profile_frees_its_autograd_graphs(calib_ids):
    """Each scored calibration draw profiles the forward; a graph kept alive by a reference cycle through the
    saved tensors leaked with every draw (a KL selection over 8 draws of Qwen2.5-0.5B: ~1.2 GiB each)."""
    adapter = get_adapter(tiny_model("llama"))

    def graph_tensors():
        gc.collect()
        return [o for o in gc.get_objects() if type(o) is torch.Tensor and o.grad_fn is not None]  # parameters have none

    before = len(graph_tensors())
    for _ in range(2):
        NirvanaScorer().memory_profile(adapter, calib_ids)
    assert len(graph_tensors()) == before


def test_encoder_decoder_profiles_too(calib_ids):
    model = tiny_t5_model()
    adapter = get_adapter(model)
    profile = NirvanaScorer().memory_profile(adapter, calib_ids[:, :16])
    assert len(profile.blocks) == len(adapter.blocks()) and sum(profile.blocks) > 0


def test_candidates_halve_the_batch_with_and_without_checkpointing():
    got = [(s.micro_batch_size, s.checkpointing) for s in candidate_schedules(32)]
    sizes = [None, 16, 8, 4, 2, 1]
    assert got == [(m, False) for m in sizes] + [(m, True) for m in sizes]
    assert [s.micro_batch_size for s in candidate_schedules(5)][:4] == [None, 3, 2, 1]


def profile_with(blocks=100, inputs=10, rest=5, grads=1000, largest=100, weight_bytes=1000, params=250):
    return ActivationProfile(seq_len=128, blocks=[blocks] * 4, block_inputs=[inputs] * 4, rest=rest,
                             head_transient=0, scored_grad_bytes=grads, largest_grad_bytes=largest,
                             block_params=params, weight_bytes=weight_bytes)


def test_memory_terms():
    p = profile_with()
    assert p.memory(Schedule(), 8) == 8 * (400 + 5) + 8 * 100 + 100  # saved + transient + one gradient
    assert p.memory(Schedule(checkpointing=True), 8) == 8 * (40 + 5 + 100) + 8 * 100 + 100
    assert p.memory(Schedule(micro_batch_size=2), 8) == 2 * (400 + 5) + 2 * 100 + 1000  # every gradient held
    assert p.time(Schedule(checkpointing=True), 8) == pytest.approx(p.time(Schedule(), 8) * 8 / 6)
    assert p.time(Schedule(micro_batch_size=2), 8) > p.time(Schedule(), 8)


def test_the_output_head_counts_in_time_and_in_streamed_weights(calib_ids):
    p = profile_with()
    with_head = ActivationProfile(**{**vars(p), "head_params": 50})
    tokens = 8 * p.seq_len
    assert with_head.time(Schedule(), 8) == p.time(Schedule(), 8) + 4 * 50 * tokens
    model = tiny_model("llama")
    adapter = get_adapter(model)
    profile = NirvanaScorer().memory_profile(adapter, calib_ids)
    head = model.get_output_embeddings().weight
    assert profile.head_params == head.numel() == adapter.vocab_size() * model.config.hidden_size
    blocks = sum(p.numel() * p.element_size() for b in adapter.blocks() for p in b.parameters())
    assert profile.weight_bytes == blocks + head.numel() * head.element_size()


def test_choice_is_the_fastest_that_fits_and_least_memory_within_the_tolerance():
    p = profile_with()
    fastest = choose_schedule(p, 8, budget_bytes=None, time_tolerance=0.0)
    assert fastest.schedule == Schedule()
    tight = choose_schedule(p, 8, budget_bytes=p.memory(Schedule(checkpointing=True), 8), time_tolerance=0.0)
    assert tight.estimate_bytes <= tight.budget_bytes and tight.schedule != Schedule()
    lenient = choose_schedule(p, 8, budget_bytes=None, time_tolerance=10.0)  # any time: least memory
    assert lenient.estimate_bytes == min(p.memory(s, 8) for s in candidate_schedules(8))
    record = lenient.record()
    assert record["estimate_gib"] == round(lenient.estimate_bytes / GIB, 3) and len(record["candidates"]) == 8


def test_default_tolerance_trades_a_fifth_more_time_for_memory():
    """Activations dominate and streaming the weights again is cheap (SmolLM2's case): micro-batches cost a few per
    cent of estimated time, checkpointing 33 %; the default takes micro-batches, never the 33 % one, and a
    tolerance of 0 keeps the single pass."""
    p = profile_with(blocks=1000, inputs=10, grads=2000, largest=200, weight_bytes=10, params=10)
    assert DEFAULT_TIME_TOLERANCE == 0.25
    chosen = choose_schedule(p, 32, budget_bytes=None).schedule
    assert chosen.micro_batch_size is not None and not chosen.checkpointing
    assert p.time(chosen, 32) <= 1.25 * p.time(Schedule(), 32) < p.time(Schedule(checkpointing=True), 32)
    assert choose_schedule(p, 32, budget_bytes=None, time_tolerance=0.0).schedule == Schedule()


def test_no_schedule_fits_names_the_smallest_budget():
    p = profile_with()
    need = min(p.memory(s, 8) for s in candidate_schedules(8))
    with pytest.raises(MemoryBudgetError, match=rf"{need / GIB:.2f} GiB"):
        choose_schedule(p, 8, budget_bytes=need - 1)


def test_an_impossible_budget_fails_before_the_scoring_pass(calib_ids):
    model = tiny_model("llama")
    rows = []
    get_adapter(model).blocks()[0].register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    with pytest.raises(MemoryBudgetError, match="smallest"):
        compute_plan(model, calib_ids, "nirvana", 0.3, 3.36, memory_budget_gib=1e-6)
    assert rows == [1, 2]  # the probe only


def test_auto_choice_is_recorded_and_gives_the_manual_plan(calib_ids, monkeypatch):
    model = tiny_model("llama")
    manual = compute_plan(model, calib_ids, "nirvana", 0.4, 3.36, schedule="manual")
    assert "schedule_choice" not in manual.extra
    # A budget that only micro-batches fit: the choice changes, the plan does not.
    profile = NirvanaScorer().memory_profile(get_adapter(model), calib_ids)
    budget = profile.memory(Schedule(micro_batch_size=1), calib_ids.shape[0])
    monkeypatch.setattr("nirvana.scoring.scorers.memory_budget", lambda device, cap: budget)
    auto = compute_plan(model, calib_ids, "nirvana", 0.4, 3.36)
    choice = auto.extra["schedule_choice"]
    assert choice["micro_batch_size"] is not None or choice["checkpointing"]
    assert kept(auto) == kept(manual)


def test_explicit_options_win_over_auto(calib_ids):
    adapter = get_adapter(tiny_model("llama"))
    for options in ({"micro_batch_size": 2}, {"checkpointing": True}, {"schedule": "manual"}):
        scorer = NirvanaScorer(**options)
        assert not scorer.automatic
        assert scorer.resolve_schedule(adapter, calib_ids) == Schedule(options.get("micro_batch_size"),
                                                                       options.get("checkpointing", False))
        assert scorer.choice is None


@pytest.mark.parametrize("bad", [{"schedule": "fast"}, {"memory_budget_gib": 0}, {"time_tolerance": -0.1}])
def test_bad_schedule_options_fail_at_construction(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        NirvanaScorer(**bad)


def test_budget_is_the_lesser_of_free_memory_and_the_cap():
    cpu = torch.device("cpu")
    free = memory_budget(cpu, None)
    if free is None:
        pytest.skip("the system does not report free memory")
    assert free > 0
    assert memory_budget(cpu, 1e6) == free  # a huge cap: free memory decides
    assert memory_budget(cpu, 0.001) < 0  # a cap below what is resident leaves nothing
