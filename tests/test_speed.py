"""Speed measurement and the FLOP model it is compared with."""

import pytest

from nirvana.evaluation import speed as S
from nirvana.pruning import prune
from nirvana.tiny import tiny_model


def test_measure_speed_returns_positive_throughputs():
    model = tiny_model("llama")
    r = S.measure_speed(model, batch_size=2, prompt_len=16, new_tokens=4, repeats=3)
    assert r.prefill_tok_s > 0 and r.decode_tok_s > 0
    assert len(r.prefill_s) == len(r.decode_s) == 3
    assert r.tag == "bs2,p16" and r.device == "cpu" and r.dtype == "float32"
    with pytest.raises(ValueError, match="new_tokens must be ≥ 1"):
        S.measure_speed(model, new_tokens=0)


def test_flop_ratio_of_an_unpruned_model_is_one():
    model = tiny_model("qwen3")
    assert S.flop_ratio(model, model, context=100) == 1.0
    assert S.flop_ratio(model, tiny_model("qwen3", seed=1)) == 1.0
    assert S.dense_twin(model) is None  # nothing to compare with


def test_flop_formula_by_hand(calib_ids):
    """Tiny llama: hidden 64, FFN 128, 3 layers, 4 heads × 16 / 2 KV heads, vocab 512, untied head."""
    model = tiny_model("llama")
    per_layer = 64 * 64 + 2 * (64 * 32) + 64 * 64 + 3 * 64 * 128  # q, k+v, o, gate+up+down
    assert S.linear_params(model) == 3 * per_layer + 512 * 64
    assert S.query_width(model) == 3 * 64
    assert S.flops_per_token(model, 10) == 2 * (3 * per_layer + 512 * 64) + 4 * 3 * 64 * 10

    dense = tiny_model("llama")
    prune(model, calib_ids, sparsity=0.5, gamma=1.0)
    ratio = S.flop_ratio(model, dense, context=32)
    assert 0 < ratio < 1
    twin = S.dense_twin(model)  # rebuilt from the pruned config alone
    assert S.linear_params(twin) == S.linear_params(dense) and S.query_width(twin) == S.query_width(dense)
    assert S.speedup_efficiency(1 / ratio, ratio) == pytest.approx(1.0)


def test_compare_speed_reports_speedups_and_efficiencies(calib_ids):
    model = tiny_model("llama")
    prune(model, calib_ids, sparsity=0.5, gamma=1.0)
    out = S.compare_speed(model, S.dense_twin(model), batch_size=1, prompt_len=16, new_tokens=4, repeats=2)
    for k in ("prefill_tok_s", "decode_tok_s", "prefill_speedup", "decode_speedup", "prefill_efficiency",
              "decode_efficiency"):
        assert out[k] > 0, k
    assert out["decode_efficiency"] == pytest.approx(out["decode_speedup"] * out["decode_flop_ratio"])
