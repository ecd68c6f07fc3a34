"""Closed-form budget, thresholds and guards (docs/method.md §2)."""

import pytest
import torch
from reference_official import official_counts

from nirvana.allocation import (
    SPARE_BEST_SCORE,
    SPARE_HIGHEST_INDEX,
    closed_form_budget,
    keep_one_group,
    round_kept_width,
    validate_hyperparameters,
)

# Llama-3.1-8B from its config alone: 32 layers, d=4096, 32 heads / 8 KV heads, head_dim 128, FFN 14336.
L8B = dict(n_layers=32, n_groups=8, group_cost=2 * 128 * (4 + 1) * 4096, n_neurons=14336, neuron_cost=3 * 4096)
# SmolLM2-135M: 30 layers, d=576, 9 heads / 3 KV heads, head_dim 64, FFN 1536.
SMOL = dict(n_layers=30, n_groups=3, group_cost=2 * 64 * (3 + 1) * 576, n_neurons=1536, neuron_cost=3 * 576)


@pytest.mark.parametrize(
    "sparsity,gamma,expected",
    [(0.5, 3.36, (44, 265_197)), (0.2, 3.36, (17, 106_078)), (0.5, 1.0, (128, 229_376))],
)
def test_llama3_8b_worked_numbers(sparsity, gamma, expected):
    b = closed_form_budget(**L8B, sparsity=sparsity, gamma=gamma)
    assert (b.k_attention, b.k_mlp) == expected


@pytest.mark.parametrize("shape", [L8B, SMOL], ids=["llama3.1-8b", "smollm2"])
def test_official_arithmetic_matches_oracle_on_a_sweep(shape):
    for gamma in (0.5, 1.0, 2.0, 3.0, 3.36):
        for s100 in range(1, 100):
            s = s100 / 100
            b = closed_form_budget(**shape, sparsity=s, gamma=gamma)
            assert (b.k_attention, b.k_mlp) == official_counts(
                shape["n_layers"], shape["n_groups"], shape["group_cost"], shape["n_neurons"],
                shape["neuron_cost"], s, gamma,
            ), (s, gamma)


def test_exact_arithmetic_differs_only_by_float_truncation():
    official = closed_form_budget(**SMOL, sparsity=0.3, gamma=1.0)
    exact = closed_form_budget(**SMOL, sparsity=0.3, gamma=1.0, arithmetic="exact")
    assert (official.k_attention, official.k_mlp) == (26, 13_823)  # rounding error below an integer
    assert (exact.k_attention, exact.k_mlp) == (27, 13_824)


def test_budget_spends_the_requested_parameters():
    for s in (0.1, 0.37, 0.5, 0.8):
        b = closed_form_budget(**L8B, sparsity=s, gamma=3.36, arithmetic="exact")
        total = L8B["n_layers"] * (L8B["n_groups"] * L8B["group_cost"] + L8B["n_neurons"] * L8B["neuron_cost"])
        spent = b.k_attention * L8B["group_cost"] + b.k_mlp * L8B["neuron_cost"]
        # truncation leaves at most one group and one neuron unspent
        assert 0 <= s * total - spent <= L8B["group_cost"] + L8B["neuron_cost"]


def test_zero_sparsity_prunes_nothing():
    b = closed_form_budget(**SMOL, sparsity=0.0, gamma=3.36)
    assert (b.k_attention, b.k_mlp) == (0, 0)


def test_keep_one_group_rules():
    scores = torch.tensor([3.0, 1.0, 2.0])
    all_pruned = torch.ones(3, dtype=torch.bool)
    assert keep_one_group(all_pruned, scores, SPARE_HIGHEST_INDEX).tolist() == [True, True, False]
    assert keep_one_group(all_pruned, scores, SPARE_BEST_SCORE).tolist() == [False, True, True]
    partial = torch.tensor([True, False, True])
    assert keep_one_group(partial, scores, SPARE_HIGHEST_INDEX).tolist() == partial.tolist()


def test_round_kept_width_spares_best_candidates():
    scores = torch.arange(20, dtype=torch.float64)
    pruned = scores < 9  # 9 pruned, 11 kept → round up to 16 kept: spare the 5 best candidates (8..4)
    out = round_kept_width(pruned, scores, 8)
    assert int((~out).sum()) == 16
    assert torch.nonzero(out).flatten().tolist() == [0, 1, 2, 3]
    # never below round_to, never above the layer width
    assert int((~round_kept_width(torch.ones(20, dtype=torch.bool), scores, 8)).sum()) == 8
    assert int((~round_kept_width(torch.ones(6, dtype=torch.bool), scores[:6], 8)).sum()) == 6


@pytest.mark.parametrize(
    "sparsity,gamma,round_to,match",
    [
        (1.0, 1.0, 8, "sparsity must be in"),
        (-0.1, 1.0, 8, "sparsity must be in"),
        (0.5, 0.0, 8, "gamma must be"),
        (0.5, -2.0, 8, "gamma must be"),
        (0.5, float("inf"), 8, "gamma must be"),
        (0.5, 1.0, 0, "round_to"),
    ],
)
def test_bad_hyperparameters_are_named(sparsity, gamma, round_to, match):
    with pytest.raises(ValueError, match=match):
        validate_hyperparameters(sparsity, gamma, round_to)
