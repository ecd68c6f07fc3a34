"""Speed measurement and the FLOP model it is compared with."""

import pytest

from nirvana.evaluation import speed as S
from nirvana.pruners import prune
from nirvana.tiny import tiny_model


def test_measure_speed_returns_positive_throughputs():
    model = tiny_model("llama")
    r = S.measure_speed(model, batch_size=2, prompt_len=16, new_tokens=4, repeats=3)
    assert r.prefill_tok_s > 0 and r.decode_tok_s > 0
    assert len(r.prefill_s) == len(r.decode_s) == 3
    assert r.batch_size == 2 and r.prompt_len == 16 and r.device == "cpu" and r.dtype == "float32"
    with pytest.raises(ValueError, match="new_tokens must be ≥ 1"):
        S.measure_speed(model, new_tokens=0)


def test_flop_formula_by_hand(calib_ids):
    """Tiny llama: hidden 64, FFN 128, 3 layers, 4 heads × 16 / 2 KV heads, vocab 512, untied head."""
    model = tiny_model("llama")
    per_layer = 64 * 64 + 2 * (64 * 32) + 64 * 64 + 3 * 64 * 128  # q, k+v, o, gate+up+down
    linear, width = 3 * per_layer + 512 * 64, 3 * 64
    prefill, decode = S.flops_per_token(model, prompt_len=16, new_tokens=4)
    assert prefill == 2 * linear + 4 * width * (16 + 1) / 2  # causal prefill attends to (p + 1) / 2 on average
    assert decode == 2 * linear + 4 * width * (16 + 4 / 2)
    assert S.dense_twin(model) is None  # not pruned: nothing to rebuild

    dense = tiny_model("llama")
    _, plan = prune(model, calib_ids, sparsity=0.5, gamma=1.0)
    kept_ff = sum(len(lp.kept_neurons) for lp in plan.layers)
    kept_q = sum(len(lp.kept_groups) for lp in plan.layers) * 2 * 16  # 2 query heads of 16 per kept group
    pruned_linear = kept_q * 64 * 2 + kept_q // 2 * 64 * 2 + 3 * 64 * kept_ff + 512 * 64  # q+o, k+v, MLP, head
    assert S.flops_per_token(model, 16, 4)[1] == 2 * pruned_linear + 4 * kept_q * (16 + 4 / 2)
    pre_ratio, dec_ratio = S.flop_ratios(model, dense, 16, 4)
    assert dec_ratio == pytest.approx((2 * pruned_linear + 4 * kept_q * 18) / decode) and 0 < pre_ratio < 1
    twin = S.dense_twin(model)  # rebuilt from the pruned config alone
    assert S.flops_per_token(twin, 16, 4) == (prefill, decode)
    assert S.speedup_efficiency(1 / dec_ratio, dec_ratio) == pytest.approx(1.0)


def test_compare_speed_reports_speedups_and_efficiencies(calib_ids):
    model = tiny_model("llama")
    prune(model, calib_ids, sparsity=0.5, gamma=1.0)
    out = S.compare_speed(model, S.dense_twin(model), batch_size=1, prompt_len=16, new_tokens=4, repeats=2)
    for k in ("prefill_tok_s", "decode_tok_s", "prefill_speedup", "decode_speedup", "prefill_efficiency",
              "decode_efficiency"):
        assert out[k] > 0, k
    assert out["decode_efficiency"] == pytest.approx(out["decode_speedup"] * out["decode_flop_ratio"])
