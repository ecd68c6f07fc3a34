"""Baselines in the same framework: random, Taylor, Wanda-sp, FLAP."""

import pytest
import torch

from nirvana.adapters import ATTENTION, MLP, get_adapter
from nirvana.baselines.flap import flap_plan
from nirvana.baselines.wanda_sp import wanda_sp_plan, wanda_unit_scores
from nirvana.pruners import compute_plan, prune, score_units
from nirvana.scoring.scorers import TaylorScorer
from nirvana.scoring.statistics import ChannelStats, layerwise_channel_stats
from nirvana.surgery.cut import apply_plan, count_parameters
from nirvana.surgery.masking import masked
from nirvana.surgery.plan import LayerPlan, PruningPlan
from nirvana.tiny import tiny_model

OPTIONS = {
    "random": {"seed": 3},
    "taylor": {"allocator": "uniform", "layer_start": 1, "layer_end": None, "round_to": 1, "spare_rule": "best_score"},
    "wanda_sp": {"round_to": 1},
    "flap": {"round_to": 1},
    "magnitude": {},
}


def big_tiny(family="llama"):
    return tiny_model(family, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, intermediate_size=96)


@pytest.mark.parametrize("pruner", sorted(OPTIONS))
def test_each_baseline_is_deterministic_valid_and_counted(pruner, calib_ids):
    plans = [compute_plan(big_tiny(), calib_ids, pruner, sparsity=0.4, **OPTIONS[pruner]) for _ in range(2)]
    assert plans[0].same_decision(plans[1])
    model = big_tiny()
    apply_plan(model, plans[0])
    assert count_parameters(model) == plans[0].params_after < plans[0].params_before
    assert all(len(lp.kept_groups) >= 1 for lp in plans[0].layers)
    assert torch.isfinite(model(calib_ids).logits).all()


def test_random_depends_on_its_seed(calib_ids):
    a = compute_plan(big_tiny(), None, "random", sparsity=0.4, seed=0)
    b = compute_plan(big_tiny(), None, "random", sparsity=0.4, seed=1)
    assert not a.same_decision(b)


def test_taylor_uses_the_lm_loss(calib_ids):
    """Taylor = |∂L/∂W ⊙ W| with transformers' own LM loss; NIRVANA's output target gives other scores."""
    from test_scoring import brute_force_scores

    model = tiny_model("llama", num_hidden_layers=2)
    ids = calib_ids[:4, :16]
    ours = score_units(model, ids, TaylorScorer())
    att, mlp = brute_force_scores(model, ids, target=lambda m, x: m(input_ids=x, labels=x).loss)
    for i in range(2):
        torch.testing.assert_close(ours.attention[i], torch.tensor(att[i], dtype=torch.float64), rtol=1e-4, atol=0)
        torch.testing.assert_close(ours.mlp[i], torch.tensor(mlp[i], dtype=torch.float64), rtol=1e-4, atol=0)
    nirvana = score_units(model, ids, "nirvana")
    assert not torch.allclose(ours.mlp[0], nirvana.mlp[0], rtol=1e-2)


def test_taylor_literal_ratio_prunes_units_per_layer_in_range(calib_ids):
    model = tiny_model("llama", num_hidden_layers=6, intermediate_size=100)
    plan = compute_plan(model, calib_ids, "taylor", sparsity=0.3, gamma=1.0, allocator="uniform", layer_start=2,
                        layer_end=-1, ratio="literal", round_to=1)
    widths = [len(lp.kept_neurons) for lp in plan.layers]
    assert widths == [100, 100, 70, 70, 70, 100]


def test_channel_stats_match_flap_recurrence_and_mean_square():
    torch.manual_seed(0)
    x = torch.randn(5, 7, 3)  # 5 samples of 7 tokens, 3 channels
    s = ChannelStats()
    s.update(x[:2])
    s.update(x[2:])
    torch.testing.assert_close(s.baseline, x.mean(dim=1).mean(dim=0))
    torch.testing.assert_close(s.mean_square, (x**2).mean(dim=(0, 1)))
    # FLAP's recurrence written out: the first sample adds nothing; later ones add Σ_t (x − μ_new)² / (n+1)
    mu, fl = torch.zeros(3), torch.zeros(3)
    for n in range(5):
        mu = mu * n / (n + 1) + x[n].mean(0) / (n + 1)
        if n > 0:
            fl = fl * (n - 1) / n + ((x[n] - mu) ** 2).sum(0) / (n + 1)
    torch.testing.assert_close(s.fluctuation, fl)


def test_wanda_scores_on_a_constructed_layer():
    """|W|·√(mean x²) averaged over output rows, summed per unit: hand-computable."""
    model = tiny_model("llama", num_hidden_layers=1, intermediate_size=16)
    group = get_adapter(model).layers()[0].mlp
    with torch.no_grad():
        group.output_projection().param.copy_(torch.arange(64 * 16, dtype=torch.float32).reshape(64, 16) % 3 - 1)
    mean_square = torch.arange(16, dtype=torch.float32) ** 2  # √ → 0, 1, 2, …
    w = group.output_projection().param
    expected = (w.abs() * torch.arange(16.0)).mean(dim=0)
    torch.testing.assert_close(wanda_unit_scores(group, mean_square).float(), expected)


def test_wanda_sp_is_sequential(calib_ids):
    """Layer 1's scores are measured with layer 0 already pruned."""
    model = big_tiny()
    adapter = get_adapter(model)
    kept, scores = wanda_sp_plan(adapter, calib_ids, sparsity=0.5)
    layers = adapter.layers()
    dense = [(list(range(lay.attention.n_units)), list(range(lay.mlp.n_units))) for lay in layers]
    only_first = PruningPlan("m", "wanda_sp", 0.5, 1.0, 0, 0, [
        LayerPlan(i, *(kept[0] if i == 0 else dense[i]), layers[i].attention.n_units, layers[i].mlp.n_units)
        for i in range(len(layers))
    ])
    with masked(model, only_first):
        stats = layerwise_channel_stats(adapter, calib_ids)
    torch.testing.assert_close(scores.mlp[1], wanda_unit_scores(layers[1].mlp, stats[(1, MLP)].mean_square))
    fresh = layerwise_channel_stats(get_adapter(big_tiny()), calib_ids)
    assert not torch.allclose(scores.mlp[1], wanda_unit_scores(layers[1].mlp, fresh[(1, MLP)].mean_square))


def test_wanda_sp_keeps_all_three_groups_at_0_2(calib_ids):
    model = tiny_model("llama", num_attention_heads=6, num_key_value_heads=3, hidden_size=48)
    plan = compute_plan(model, calib_ids, "wanda_sp", sparsity=0.2)
    assert all(len(lp.kept_groups) == 3 for lp in plan.layers)  # int(0.2·3) = 0


def test_flap_bias_compensation_is_exact_on_the_mean_input(calib_ids):
    model = big_tiny()
    adapter = get_adapter(model)
    stats = layerwise_channel_stats(adapter, calib_ids)
    kept, _, biases = flap_plan(adapter, calib_ids, sparsity=0.4)
    plan = compute_plan(big_tiny(), calib_ids, "flap", sparsity=0.4)
    assert [(lp.kept_groups, lp.kept_neurons) for lp in plan.layers] == kept
    layers = adapter.layers()
    dense_out = {}
    for layer in layers:
        for kind in (ATTENTION, MLP):
            lin = layer.group(kind).output_projection().module
            dense_out[(layer.index, kind)] = lin(stats[(layer.index, kind)].baseline)
    apply_plan(model, plan)
    pruned_any = False
    for layer, (k_att, k_mlp) in zip(layers, kept):
        for kind, keep in ((ATTENTION, k_att), (MLP, k_mlp)):
            group = get_adapter(model).layers()[layer.index].group(kind)
            block = group.output_projection().block
            cols = (torch.tensor(keep)[:, None] * block + torch.arange(block)).flatten()
            x = stats[(layer.index, kind)].baseline[cols]
            torch.testing.assert_close(group.output_projection().module(x), dense_out[(layer.index, kind)],
                                       rtol=1e-5, atol=1e-4)
            pruned_any |= len(keep) < (layer.group(kind).n_units)
    assert pruned_any
    assert model.config.nirvana_output_bias is True


def test_flap_plan_roundtrips_with_biases(tmp_path, calib_ids):
    pruned, plan = prune(big_tiny(), calib_ids, pruner="flap", sparsity=0.4)
    plan.save(tmp_path)
    again = PruningPlan.load(tmp_path)
    assert again.output_bias.keys() == plan.output_bias.keys()
    dense = big_tiny()
    apply_plan(dense, again)
    torch.testing.assert_close(dense(calib_ids).logits, pruned(calib_ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("pruner", ["nirvana", "flap", "wanda_sp"])
def test_masked_forward_equals_physically_pruned(pruner, calib_ids):
    model = big_tiny("qwen2")
    plan = compute_plan(model, calib_ids, pruner, sparsity=0.5)
    with torch.no_grad():
        before = model(calib_ids).logits
        with masked(model, plan):
            masked_logits = model(calib_ids).logits
        torch.testing.assert_close(model(calib_ids).logits, before, rtol=0, atol=0)  # restored exactly
        apply_plan(model, plan)
        torch.testing.assert_close(masked_logits, model(calib_ids).logits, rtol=0, atol=1e-5)
