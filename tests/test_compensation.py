"""Bias compensation as an ablation flag of the score-based pruners (nirvana.surgery.compensation): the same units go,
and each output projection gets the removed channels' calibration-mean contribution as a bias."""

from __future__ import annotations

import pytest
import torch

from nirvana.adapters import get_adapter
from nirvana.pruners import compute_plan
from nirvana.surgery.checkpoint import load_pruned, save_pruned
from nirvana.surgery.cut import apply_plan
from nirvana.tiny import tiny_model


@pytest.mark.parametrize("pruner", ["nirvana", "taylor"])
def test_same_units_and_the_removed_channels_mean_as_bias(pruner, calib_ids, tmp_path):
    model = tiny_model("llama")
    plain = compute_plan(model, calib_ids, pruner, sparsity=0.4, gamma=3.36, allocator="global")
    comp = compute_plan(model, calib_ids, pruner, sparsity=0.4, gamma=3.36, allocator="global",
                        bias_compensation=True)
    assert comp.same_decision(plain) and plain.output_bias is None
    assert comp.extra["bias_compensation"] is True and comp.params_after > plain.params_after  # new bias vectors
    # Independently: the mean over calibration tokens of down_proj's input in layer 0, through the removed columns.
    layer = get_adapter(model).layers()[0]
    proj = layer.mlp.output_projection()
    seen = []
    handle = proj.module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().float()))
    with torch.no_grad():
        model(calib_ids)
    handle.remove()
    x = seen[0]
    mean = x.mean(dim=1).mean(dim=0)  # per sample token mean, then over samples (FLAP's baseline)
    removed = sorted(set(range(layer.mlp.n_units)) - set(comp.layers[0].kept_neurons))
    expected = proj.param.detach().float()[:, removed] @ mean[removed]
    torch.testing.assert_close(comp.output_bias[0]["mlp"], expected, rtol=1e-4, atol=1e-6)
    # The cut model carries the biases through a save and a reload.
    with torch.no_grad():
        pruned = apply_plan(model, comp)
        logits = pruned(calib_ids).logits
    again = load_pruned(save_pruned(pruned, comp, tmp_path / "c")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(calib_ids).logits, logits)


def test_a_pruner_without_calibration_refuses_it(calib_ids):
    with pytest.raises(ValueError, match="uses no calibration batch"):
        compute_plan(tiny_model("llama"), calib_ids, "magnitude", sparsity=0.3, bias_compensation=True)


def test_kept_iou_measures_how_much_two_draws_agree(calib_ids):
    model = tiny_model("llama")
    a = compute_plan(model, calib_ids, "nirvana", sparsity=0.4, gamma=3.36)
    b = compute_plan(model, calib_ids[:4], "nirvana", sparsity=0.4, gamma=3.36)
    assert a.kept_iou(a) == {"attention": 1.0, "mlp": 1.0}
    iou = b.kept_iou(a)
    assert iou == a.kept_iou(b) and all(0.0 < v <= 1.0 for v in iou.values())
    kept_a = {(lp.index, n) for lp in a.layers for n in lp.kept_neurons}
    kept_b = {(lp.index, n) for lp in b.layers for n in lp.kept_neurons}
    assert iou["mlp"] == len(kept_a & kept_b) / len(kept_a | kept_b)
    with pytest.raises(ValueError, match="same model"):
        a.kept_iou(compute_plan(tiny_model("llama", num_hidden_layers=4), calib_ids, "nirvana", sparsity=0.4))
