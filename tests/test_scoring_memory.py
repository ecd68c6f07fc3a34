"""The memory-frugal scoring options change the schedule, never the criterion (nirvana/scoring/scorers.py)."""

import pytest
import torch

from nirvana.adapters import get_adapter
from nirvana.bench.naive import full_gradient_scores
from nirvana.pruners import compute_plan, plan_from_scores
from nirvana.scoring.scorers import NirvanaScorer, TaylorScorer, scored_parameters
from nirvana.scoring.targets import chunked_output_max_target, output_max_target
from nirvana.scoring.units import UnitScores, blocked_sum
from nirvana.tiny import tiny_model, tiny_t5_model

OPTIONS = [
    {"vocab_chunk": None},
    {"vocab_chunk": 7},
    {"checkpointing": True},
    {"micro_batch_size": 3},
    {"micro_batch_size": 1, "checkpointing": True, "vocab_chunk": 50},
]


def assert_scores_close(a, b, rtol=2e-5):
    for xs, ys in ((a.attention, b.attention), (a.mlp, b.mlp)):
        for x, y in zip(xs, ys, strict=True):
            torch.testing.assert_close(x, y, rtol=rtol, atol=0)


def kept(plan):
    return [(lp.kept_groups, lp.kept_neurons) for lp in plan.layers]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_options_reproduce_the_full_gradient_scores_and_plan(model, calib_ids, options):
    adapter = get_adapter(model)
    reference = full_gradient_scores(adapter, calib_ids)
    scores = NirvanaScorer(**options).score(adapter, calib_ids)
    assert_scores_close(scores, reference)
    for s in (0.2, 0.5):
        assert kept(plan_from_scores(model, scores, s, 3.36)) == kept(plan_from_scores(model, reference, s, 3.36))


def test_options_leave_the_model_as_it_was(calib_ids):
    model = tiny_model("llama")
    before = model(calib_ids).logits
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    NirvanaScorer(checkpointing=True, micro_batch_size=3).score(get_adapter(model), calib_ids)
    assert all("forward" not in block.__dict__ for block in get_adapter(model).blocks())  # class method again
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(model(calib_ids).logits, before, rtol=0, atol=0)


def test_checkpointing_keeps_an_instance_forward_it_found():
    model = tiny_model("llama")
    adapter = get_adapter(model)
    block = adapter.blocks()[0]
    calls = []
    original = block.forward

    def hooked(*args, **kwargs):  # what accelerate's device_map hooks look like: an instance attribute
        calls.append(1)
        return original(*args, **kwargs)

    block.forward = hooked
    with adapter.activation_checkpointing():
        model(torch.zeros(1, 4, dtype=torch.long))
    assert block.forward is hooked and calls


def test_t5_options_and_taylor_micro_batches(calib_ids):
    t5 = tiny_t5_model("t5")
    adapter = get_adapter(t5)
    ref = NirvanaScorer().score(adapter, calib_ids)
    assert_scores_close(NirvanaScorer(checkpointing=True, micro_batch_size=3).score(adapter, calib_ids), ref)
    model = tiny_model("qwen2")
    a = get_adapter(model)
    assert_scores_close(TaylorScorer(micro_batch_size=2, checkpointing=True).score(a, calib_ids),
                        TaylorScorer().score(a, calib_ids))


def test_adding_per_slice_scores_is_a_different_criterion(calib_ids):
    """Why micro-batching accumulates gradients: Σ_i |g_i ⊙ W| ≠ |Σ_i g_i ⊙ W| (triangle inequality)."""
    model = tiny_model("llama")
    adapter = get_adapter(model)
    exact = NirvanaScorer(micro_batch_size=2).score(adapter, calib_ids)
    summed = UnitScores.zeros(adapter)
    for part in calib_ids.split(2):
        s = full_gradient_scores(adapter, part)  # each slice's own |g_i ⊙ W|, weighted as in the mean
        for kind in ("attention", "mlp"):
            for acc, x in zip(summed.of(kind), s.of(kind)):
                acc += x * part.shape[0] / calib_ids.shape[0]
    for kind in ("attention", "mlp"):
        for e, s in zip(exact.of(kind), summed.of(kind)):
            assert torch.all(s >= e * (1 - 1e-6))  # never smaller …
        assert any(not torch.allclose(e, s, rtol=1e-3) for e, s in zip(exact.of(kind), summed.of(kind)))  # … and not equal


def test_chunked_target_value_and_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 103, bias=True)
    hidden = torch.randn(3, 5, 16, requires_grad=True)
    full = output_max_target(head(hidden))
    (g_full,) = torch.autograd.grad(full, hidden)
    for chunk in (1, 10, 103, 1000):
        f = chunked_output_max_target(hidden, head, chunk)
        (g,) = torch.autograd.grad(f, hidden)
        torch.testing.assert_close(f, full)
        torch.testing.assert_close(g, g_full)


@pytest.mark.parametrize("bad", [{"vocab_chunk": 0}, {"micro_batch_size": 0}, {"micro_batch_size": -2}])
def test_bad_options_fail_at_construction(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        NirvanaScorer(**bad)


def test_compute_plan_takes_the_options_and_checkpointing_shares_the_cache(calib_ids, tmp_path):
    model = tiny_model("llama")
    plain = compute_plan(model, calib_ids, "nirvana", sparsity=0.4, gamma=2.0, score_cache=str(tmp_path))
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    ckpt = compute_plan(model, calib_ids, "nirvana", sparsity=0.4, gamma=2.0, score_cache=str(tmp_path),
                        checkpointing=True)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1  # same scores: read from the cache
    micro = compute_plan(model, calib_ids, "nirvana", sparsity=0.4, gamma=2.0, score_cache=str(tmp_path),
                         micro_batch_size=2)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2  # summation order may differ: its own entry
    assert kept(plain) == kept(ckpt) == kept(micro)
    assert micro.extra["micro_batch_size"] == 2


def test_reduction_helpers_agree_with_the_naive_loop():
    """blocked_sum over every scored slice equals an explicit loop over units and their index blocks."""
    model = tiny_model("llama")
    adapter = get_adapter(model)
    owners = scored_parameters(adapter, include_bias=False)
    assert {id(p) for p in adapter.prunable_parameters()} >= set(owners)
    for p, entries in owners.values():
        w = p.detach().abs()
        for _, _, n, s in entries:
            start, stop = s.span(n)
            loop = torch.stack([w.index_select(s.dim, s.element_index([u - start])).sum() for u in range(start, stop)])
            torch.testing.assert_close(blocked_sum(w, s, n), loop)


@pytest.mark.parametrize("pruner", ["magnitude", "random"])
def test_calibration_free_pruners_ignore_the_memory_options_they_inherit(pruner):
    """conf/pruner/{magnitude,random}.yaml inherit nirvana.yaml, memory options included."""
    model = tiny_model("llama")
    plan = compute_plan(model, None, pruner, sparsity=0.3, gamma=1.0, micro_batch_size=None, checkpointing=False,
                        vocab_chunk=8192)
    assert plan.pruned_neurons > 0 and "vocab_chunk" not in plan.extra


def test_the_memory_cap_names_the_current_gpu_when_the_device_has_no_index(monkeypatch):
    """`--device cuda` (no index): torch 2.11's set_per_process_memory_fraction refuses a device without one."""
    from types import SimpleNamespace

    from nirvana.bench.memory import GIB, set_memory_cap

    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(total_memory=96 * GIB))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, index: calls.append((f, index)))
    set_memory_cap("cuda", 24.0)
    set_memory_cap("cuda:1", None)
    set_memory_cap("cpu", 24.0)  # a no-op
    assert calls == [(0.25, 3), (1.0, 1)]
