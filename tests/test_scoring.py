"""NIRVANA saliency against brute force, and the scorer's bookkeeping."""

import torch

from nirvana.adapters import get_adapter
from nirvana.pruners import score_units
from nirvana.scoring.scorers import MagnitudeScorer
from nirvana.tiny import tiny_model


def official_target(model, ids):
    return model(input_ids=ids, use_cache=False).logits.max(dim=1).values.mean()


def brute_force_scores(model, ids, target=official_target):
    """Per-weight autograd of `target`, aggregated by explicit loops over heads and neurons."""
    cfg = model.config
    weights = {n: p for n, p in model.named_parameters() if "proj.weight" in n}
    f = target(model, ids)
    grads = dict(zip(weights, torch.autograd.grad(f, list(weights.values()))))
    sal = {n: (grads[n] * w).abs() for n, w in weights.items()}
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_rep = cfg.num_attention_heads // cfg.num_key_value_heads
    att, mlp = [], []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        groups = []
        for g in range(cfg.num_key_value_heads):
            total = 0.0
            for h in range(cfg.num_attention_heads):
                if h // n_rep == g:  # HF repeat_kv: query head h reads KV head h // n_rep
                    total += sal[p + "self_attn.q_proj.weight"][h * hd : (h + 1) * hd].sum().item()
                    total += sal[p + "self_attn.o_proj.weight"][:, h * hd : (h + 1) * hd].sum().item()
            total += sal[p + "self_attn.k_proj.weight"][g * hd : (g + 1) * hd].sum().item()
            total += sal[p + "self_attn.v_proj.weight"][g * hd : (g + 1) * hd].sum().item()
            groups.append(total)
        att.append(groups)
        mlp.append(
            [
                sal[p + "mlp.gate_proj.weight"][n].sum().item()
                + sal[p + "mlp.up_proj.weight"][n].sum().item()
                + sal[p + "mlp.down_proj.weight"][:, n].sum().item()
                for n in range(cfg.intermediate_size)
            ]
        )
    return att, mlp


def test_saliency_equals_brute_force_on_a_two_layer_model(calib_ids):
    for family in ("llama", "qwen3"):
        model = tiny_model(family, num_hidden_layers=2)
        ids = calib_ids[:4, :16]
        ours = score_units(model, ids, "nirvana")
        att, mlp = brute_force_scores(model, ids)
        for i in range(2):
            torch.testing.assert_close(ours.attention[i], torch.tensor(att[i], dtype=torch.float64), rtol=1e-5, atol=0)
            torch.testing.assert_close(ours.mlp[i], torch.tensor(mlp[i], dtype=torch.float64), rtol=1e-5, atol=0)


def test_scoring_leaves_no_gradients_and_restores_flags(calib_ids):
    model = tiny_model("llama")
    model.model.embed_tokens.weight.requires_grad_(False)
    score_units(model, calib_ids[:2, :16], "nirvana")
    assert all(p.grad is None for p in model.parameters())
    assert model.model.embed_tokens.weight.requires_grad is False
    assert model.model.layers[0].mlp.up_proj.weight.requires_grad is True


def test_magnitude_is_weight_l1_per_unit():
    model = tiny_model("qwen2")  # q/k/v biases: not scored by default, as in the official criterion
    scores = MagnitudeScorer().score(get_adapter(model), None)
    layer = model.model.layers[1]
    n = 5
    expected = (
        layer.mlp.gate_proj.weight[n].abs().sum()
        + layer.mlp.up_proj.weight[n].abs().sum()
        + layer.mlp.down_proj.weight[:, n].abs().sum()
    )
    assert abs(scores.mlp[1][n].item() - expected.item()) < 1e-4
    with_bias = MagnitudeScorer(include_bias=True).score(get_adapter(model), None)
    hd = layer.self_attn.head_dim
    assert abs(
        (with_bias.attention[1][0] - scores.attention[1][0]).item()
        - (
            layer.self_attn.q_proj.bias[: 2 * hd].abs().sum()
            + layer.self_attn.k_proj.bias[:hd].abs().sum()
            + layer.self_attn.v_proj.bias[:hd].abs().sum()
        ).item()
    ) < 1e-4
