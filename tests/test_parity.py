"""Exact parity with an independent implementation of the official algorithm (tests/reference_official.py)."""

import pytest
import reference_official
from reference_official import official_counts, official_plan, official_unit_scores
from reference_official import plan_from_scores as ref_plan_from_scores

from nirvana.pruners import compute_plan, plan_from_scores, score_units
from nirvana.scoring.scorers import NirvanaScorer
from nirvana.tiny import tiny_model


def test_the_reference_passes_its_own_self_checks():
    """The oracle is checked too: closed-form numbers, guards, and its loop against the official reshaping."""
    reference_official._self_check()


def kept(plan):
    return [{"kept_groups": lp.kept_groups, "kept_neurons": lp.kept_neurons} for lp in plan.layers]


@pytest.mark.parametrize("criterion", ["nirvana", "magnitude"])
@pytest.mark.parametrize("sparsity,gamma", [(0.2, 3.36), (0.5, 3.36), (0.2, 1.0), (0.7, 1.0)])
def test_tiny_plans_equal_official(criterion, sparsity, gamma, calib_ids):
    model = tiny_model("llama", num_hidden_layers=6, num_key_value_heads=2, num_attention_heads=8,
                       intermediate_size=160)
    ours = compute_plan(model, calib_ids, criterion, sparsity=sparsity, gamma=gamma)
    ref = official_plan(model, calib_ids, sparsity, gamma, criterion=criterion)
    assert kept(ours) == ref["layers"]
    assert (ours.pruned_groups, ours.pruned_neurons) == (ref["pruned_groups"], ref["pruned_neurons"])


@pytest.mark.parametrize("include_bias", [False, True])
@pytest.mark.parametrize("sparsity", [0.2, 0.5])
def test_tiny_qwen2_plans_equal_official(include_bias, sparsity, calib_ids):
    """The Qwen2 layout: q/k/v biases leave with their group but the official budget counts weights only."""
    model = tiny_model("qwen2", num_hidden_layers=6, num_key_value_heads=2, num_attention_heads=14,
                       hidden_size=112, intermediate_size=160)
    ours = compute_plan(model, calib_ids, "nirvana", sparsity=sparsity, gamma=3.36, include_bias=include_bias)
    ref = official_plan(model, calib_ids, sparsity, 3.36, include_bias=include_bias)
    assert kept(ours) == ref["layers"]
    assert (ours.pruned_groups, ours.pruned_neurons) == (ref["pruned_groups"], ref["pruned_neurons"])


def test_qwen2_budget_counts_weights_only_as_the_official_code():
    """Biases in the budget would move k_m by a few neurons (Qwen2.5-0.5B at s=0.5: 63,894 instead of 63,891)."""
    from nirvana.adapters import get_adapter
    from nirvana.allocation import budget_for

    model = tiny_model("qwen2", num_hidden_layers=6, num_key_value_heads=2, num_attention_heads=14,
                       hidden_size=112, intermediate_size=160)
    dm = reference_official._dims(model)
    for sparsity in [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55]:
        for gamma in (1.0, 3.36):
            expected = official_counts(dm["n_layers"], dm["n_kv"], 2 * dm["head_dim"] * (dm["n_rep"] + 1) * dm["d_model"],
                                       dm["ffn"], 3 * dm["d_model"], sparsity, gamma)
            budget = budget_for(get_adapter(model).layers(), sparsity, gamma)
            assert (budget.k_attention, budget.k_mlp) == expected, (sparsity, gamma)


SMOL_CASES = [("nirvana", 0.2, 3.36), ("nirvana", 0.5, 3.36), ("nirvana", 0.2, 1.0), ("magnitude", 0.2, 3.36)]


@pytest.fixture(scope="module")
def smol_scores(smollm2, smollm2_calibration):
    """One scoring pass per criterion and implementation (each nirvana pass is ~25 s on 2 cores)."""
    ours = {c: score_units(smollm2, smollm2_calibration, c) for c in ("nirvana", "magnitude")}
    ref = {c: official_unit_scores(smollm2, smollm2_calibration, c) for c in ("nirvana", "magnitude")}
    return ours, ref


@pytest.mark.slow
@pytest.mark.parametrize("criterion,sparsity,gamma", SMOL_CASES)
def test_smollm2_plans_equal_official(criterion, sparsity, gamma, smollm2, smol_scores):
    """The issue's acceptance check: fp32 SmolLM2, one fixed 32×128 calibration tensor, identical plans."""
    ours, ref = smol_scores
    plan = plan_from_scores(smollm2, ours[criterion], sparsity, gamma)
    cfg = smollm2.config
    n_rep = cfg.num_attention_heads // cfg.num_key_value_heads
    k_a, k_m = official_counts(cfg.num_hidden_layers, cfg.num_key_value_heads,
                               2 * cfg.head_dim * (n_rep + 1) * cfg.hidden_size, cfg.intermediate_size,
                               3 * cfg.hidden_size, sparsity, gamma)
    expected = ref_plan_from_scores(*ref[criterion], k_a, k_m)
    assert kept(plan) == expected["layers"]
    assert (plan.pruned_groups, plan.pruned_neurons) == (expected["pruned_groups"], expected["pruned_neurons"])


@pytest.mark.slow
def test_smollm2_memory_options_leave_the_plan_unchanged(smollm2, smollm2_calibration):
    """The memory options (nirvana/scoring/scorers.py), all at once, give the plain pass's plans. On 8 of the 32 rows,
    in four micro-batches as the full batch had: a full pass costs over a minute on one core, and the plain pass is
    held to the official plans above."""
    rows = smollm2_calibration[:8]
    plain = score_units(smollm2, rows, "nirvana")
    frugal = score_units(smollm2, rows, NirvanaScorer(checkpointing=True, micro_batch_size=2, vocab_chunk=4096))
    for sparsity in (0.2, 0.5):
        assert kept(plan_from_scores(smollm2, frugal, sparsity, 3.36)) == kept(plan_from_scores(smollm2, plain, sparsity, 3.36))
