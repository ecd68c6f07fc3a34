"""Surgery, plans and the end-to-end prune on every supported decoder family."""

import pytest
import torch

from nirvana.adapters import get_adapter, supported_model_types
from nirvana.pruners import compute_plan, prune
from nirvana.surgery.cut import apply_plan, count_parameters
from nirvana.surgery.plan import PruningPlan
from nirvana.tiny import tiny_model


def test_sparsity_zero_keeps_everything_and_logits(model, calib_ids):
    before = model(calib_ids).logits
    _, plan = prune(model, calib_ids, sparsity=0.0, gamma=3.36)
    assert plan.pruned_groups == 0 and plan.pruned_neurons == 0
    assert plan.params_after == plan.params_before == count_parameters(model)
    torch.testing.assert_close(model(calib_ids).logits, before, rtol=0, atol=0)


def test_pruned_model_matches_its_plan(family, calib_ids):
    model = tiny_model(family, num_hidden_layers=4, intermediate_size=200)
    _, plan = prune(model, calib_ids, sparsity=0.4, gamma=2.0)
    adapter = get_adapter(model)
    assert count_parameters(model) == plan.params_after < plan.params_before
    n_rep = model.config.num_attention_heads // model.config.num_key_value_heads
    for layer, lp in zip(model.model.layers, plan.layers):
        hd = layer.self_attn.head_dim
        assert layer.self_attn.k_proj.out_features == len(lp.kept_groups) * hd  # whole GQA groups
        assert layer.self_attn.q_proj.out_features == len(lp.kept_groups) * n_rep * hd
        assert layer.self_attn.o_proj.in_features == len(lp.kept_groups) * n_rep * hd
        width = layer.mlp.gate_proj.out_features
        assert width == len(lp.kept_neurons) and (width % 8 == 0 or width == 200)
        assert 1 <= len(lp.kept_groups)
    overrides = adapter.per_layer_overrides()
    assert [model.config.per_layer_config[i].intermediate_size for i in range(4)] == [
        overrides[i]["intermediate_size"] for i in range(4)
    ]
    out = model(calib_ids).logits
    assert torch.isfinite(out).all()
    gen = model.generate(calib_ids[:2, :8], max_new_tokens=6, do_sample=False)  # KV cache across layers
    assert gen.shape == (2, 14)


def test_generate_with_cache_equals_without(calib_ids):
    model = tiny_model("llama")
    prune(model, calib_ids, sparsity=0.5, gamma=1.0)
    prompt = calib_ids[:1, :8]
    a = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    b = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(a, b)


def test_plan_applied_to_dense_model_reproduces_pruned_model(tmp_path, calib_ids):
    pruned = tiny_model("qwen2")
    _, plan = prune(pruned, calib_ids, sparsity=0.5, gamma=1.5)
    plan.save(tmp_path)
    dense = tiny_model("qwen2")
    apply_plan(dense, PruningPlan.load(tmp_path))
    for (n1, p1), (n2, p2) in zip(pruned.state_dict().items(), dense.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_plan_json_schema(tmp_path, calib_ids):
    model = tiny_model("llama")
    plan = compute_plan(model, calib_ids, sparsity=0.3, gamma=3.36)
    import json

    d = json.loads(plan.save(tmp_path).read_text())
    assert d["format"] == "nirvana-plan/1"
    for key, typ in [("model", str), ("pruner", str), ("sparsity", float), ("gamma", float),
                     ("params_before", int), ("params_after", int), ("layers", list)]:
        assert isinstance(d[key], typ), key
    layer = d["layers"][0]
    assert layer["index"] == 0
    assert layer["attention"]["kept_groups"] == sorted(layer["attention"]["kept_groups"])
    assert layer["mlp"]["kept_neurons"] == sorted(layer["mlp"]["kept_neurons"])
    assert PruningPlan.from_dict(d).same_decision(plan)


def test_determinism(calib_ids):
    plans = [compute_plan(tiny_model("mistral"), calib_ids, sparsity=0.5, gamma=3.0) for _ in range(2)]
    assert plans[0].same_decision(plans[1])


def test_uniform_allocator_prunes_layers_alike(calib_ids):
    model = tiny_model("llama", num_hidden_layers=4, intermediate_size=256)
    plan = compute_plan(model, calib_ids, sparsity=0.5, gamma=1.0, allocator="uniform")
    assert len({len(lp.kept_neurons) for lp in plan.layers}) == 1


def test_plan_for_other_model_is_rejected(calib_ids):
    plan = compute_plan(tiny_model("llama"), calib_ids, sparsity=0.3, gamma=1.0)
    with pytest.raises(ValueError, match="dense units"):
        apply_plan(tiny_model("llama", intermediate_size=64), plan)


def test_unsupported_model_type_lists_supported():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    with pytest.raises(ValueError) as err:
        get_adapter(model)
    for t in supported_model_types():
        assert t in str(err.value)


@pytest.mark.parametrize(
    "make_ids,match",
    [
        (lambda ids: ids[:0], "empty"),
        (lambda ids: ids[0], "2-D"),
        (lambda ids: torch.full((2, 300), 1), "exceeds the model's context"),
        (lambda ids: ids.clone().fill_(10_000), "vocabulary"),
        (lambda ids: ids.float(), "integers"),
        (lambda ids: -ids - 1, "vocabulary"),
    ],
    ids=["empty", "1d", "too-long", "oov", "float", "negative"],
)
def test_bad_calibration_fails_before_any_forward(calib_ids, make_ids, match):
    model = tiny_model("llama")
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises((ValueError, TypeError), match=match):
        compute_plan(model, make_ids(calib_ids), sparsity=0.2, gamma=1.0)
    assert calls == []


def test_bad_hyperparameters_fail_before_scoring(calib_ids):
    model = tiny_model("llama")
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="sparsity"):
        compute_plan(model, calib_ids, sparsity=1.5, gamma=1.0)
    with pytest.raises(ValueError, match="gamma"):
        compute_plan(model, calib_ids, sparsity=0.5, gamma=0)
    assert calls == []


def test_score_cache_reuses_scores_and_notices_changed_weights(tmp_path, calib_ids, monkeypatch):
    from nirvana.scoring.scorers import NirvanaScorer

    calls = []
    real = NirvanaScorer.score
    monkeypatch.setattr(NirvanaScorer, "score", lambda self, *a: calls.append(1) or real(self, *a))
    model = tiny_model("llama")
    a = compute_plan(model, calib_ids, "nirvana", sparsity=0.2, score_cache=str(tmp_path))
    b = compute_plan(model, calib_ids, "nirvana", sparsity=0.5, gamma=2.0, score_cache=str(tmp_path))
    assert len(calls) == 1  # scores do not depend on sparsity or γ
    assert b.same_decision(compute_plan(model, calib_ids, "nirvana", sparsity=0.5, gamma=2.0))
    assert a.sparsity == 0.2
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(2)
    compute_plan(model, calib_ids, "nirvana", sparsity=0.2, score_cache=str(tmp_path))
    compute_plan(model, calib_ids[:4], "nirvana", sparsity=0.2, score_cache=str(tmp_path))
    assert len(calls) == 4  # new weights → rescored; new calibration → rescored (plus the uncached call)
