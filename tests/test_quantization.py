"""Quantization after pruning (nirvana.quantization, torchao): every scheme on a tiny pruned model with per-layer
widths, saved and reloaded exactly, the group rule for widths a group size does not divide, bad input refused
before any weight changes, and the quant stage of a run."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_evidence import TINY, cfg

from experiments.run import run_experiment
from nirvana.adapters import get_adapter
from nirvana.pruners import prune
from nirvana.quantization import (
    SCHEMES,
    QuantSpec,
    group_for,
    load_quantized,
    plan_layers,
    quantize,
    save_quantized,
)
from nirvana.surgery.checkpoint import load_pruned, save_pruned
from nirvana.tiny import tiny_model

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory, calib_ids, tokenizer):
    model = tiny_model("llama", hidden_size=128, intermediate_size=320, num_attention_heads=4, num_key_value_heads=2)
    prune(model, calib_ids, sparsity=0.4, gamma=3.36)
    widths = {m.in_features for n, m in get_adapter(model).block_linears().items() if n.endswith("down_proj")}
    assert len(widths) > 1  # heterogeneous: each layer its own MLP width
    return save_pruned(model, None, tmp_path_factory.mktemp("ckpt") / "c", tokenizer)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_keeps_logits_close_and_reloads_exactly(scheme, pruned_checkpoint, calib_ids, tmp_path):
    model = load_pruned(pruned_checkpoint).eval()
    with torch.no_grad():
        reference = model(calib_ids).logits
    spec = QuantSpec(scheme, group_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decisions = quantize(model, spec, calib_ids)
    assert set(decisions) == set(get_adapter(model).block_linears())
    assert all(type(m.weight.data) is not torch.Tensor for m in get_adapter(model).block_linears().values())
    with torch.no_grad():
        logits = model(calib_ids).logits
    assert torch.isfinite(logits).all()
    # Per-token KL to the float model (measured: int8_wo 0.005, w8a8 0.012, smoothquant 0.011, int4 g32 0.73 — random
    # tiny weights are the hard case for 4 bits): bounds with room, far below what unrelated logits would give.
    kl = torch.nn.functional.kl_div(logits.log_softmax(-1), reference.log_softmax(-1), log_target=True,
                                    reduction="batchmean").item() / calib_ids.shape[1]
    assert kl < {"int8_wo": 0.03, "w8a8": 0.05, "w8a8_smoothquant": 0.05, "int4_wo": 1.5}[scheme]
    save_quantized(model, spec, decisions, tmp_path / "q")
    again = load_pruned(pruned_checkpoint).eval()
    assert load_quantized(again, tmp_path / "q") == (spec, decisions)
    with torch.no_grad():
        torch.testing.assert_close(again(calib_ids).logits, logits, rtol=0, atol=0)


def test_group_rule_for_pruned_widths(pruned_checkpoint):
    shrink = QuantSpec("int4_wo", group_size=128)
    assert [group_for(w, shrink) for w in (256, 192, 96, 40)] == [128, 64, 32, None]  # 40: per-channel
    strict = QuantSpec("int4_wo", group_size=128, group_rule="error")
    assert group_for(256, strict) == 128 and group_for(192, strict) is None
    model = load_pruned(pruned_checkpoint)
    decisions = plan_layers(model, QuantSpec("int4_wo", group_size=64))
    for name, m in get_adapter(model).block_linears().items():
        g = group_for(m.in_features, QuantSpec("int4_wo", group_size=64))
        assert decisions[name] == (f"int4_wo-g{g}" if g else "int4_wo-per_channel")
    with pytest.raises(ValueError, match=r"down_proj: input width \d+ is not divisible by group_size 64"):
        plan_layers(model, QuantSpec("int4_wo", group_size=64, group_rule="error"))


def test_bad_requests_fail_before_any_weight_changes(pruned_checkpoint, calib_ids):
    for spec, match in (({"scheme": "int3"}, "unknown quantization scheme"),
                        ({"scheme": "int4_wo", "group_size": 48}, "power of two"),
                        ({"scheme": "int8_wo", "alpha": 2.0}, "alpha"),
                        ({"scheme": "int4_wo", "group_rule": "pad"}, "group_rule")):
        with pytest.raises(ValueError, match=match):  # when the spec is built: before any model is touched
            QuantSpec(**spec)
    model = load_pruned(pruned_checkpoint)
    with pytest.raises(ValueError, match="pass calibration_ids"):
        quantize(model, QuantSpec("w8a8_smoothquant"))
    quantize(model, QuantSpec("int8_wo"))
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, QuantSpec("int8_wo"))
    with pytest.raises(ValueError, match="int8 weights: quantize a float checkpoint"):
        plan_layers(_int_model(), QuantSpec("int8_wo"))


def _int_model():
    model = tiny_model("llama")
    for m in get_adapter(model).block_linears().values():
        m.weight = torch.nn.Parameter(m.weight.data.to(torch.int8), requires_grad=False)
    return model


def test_a_run_prunes_quantizes_and_says_so_in_its_rows(tmp_path):
    rows = run_experiment(cfg(*TINY, "pruner=nirvana", "sparsity=0.3", "quant=w8a8_smoothquant",
                              f"job.results_file={tmp_path / 'r.jsonl'}"), tmp_path / "run")
    assert {r["dtype"] for r in rows} == {"w8a8_smoothquant-a0.5"}
    ratio = next(r for r in rows if r["metric"] == "size_ratio")
    assert 0 < ratio["value"] < 1 and ratio["extra"]["layers"] == {"w8a8_smoothquant-a0.5": 3 * 7}
    ppl = next(r for r in rows if r["metric"].startswith("ppl/"))
    assert ppl["value"] > 1 and ppl["dtype"] == "w8a8_smoothquant-a0.5"
    plain = run_experiment(cfg(*TINY, "pruner=nirvana", "sparsity=0.3", f"job.results_file={tmp_path / 'r.jsonl'}"),
                           tmp_path / "plain")
    assert plain[0]["run_id"] != rows[0]["run_id"] and plain[0]["dtype"] == "float32"


def test_the_quantize_cli_saves_what_load_quantized_restores(pruned_checkpoint, tmp_path, calib_ids):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "experiments.quantize", f"model.path={pruned_checkpoint}", "model=tiny_llama",
           "quant=int4_wo", "quant.group_size=64", f"save_dir={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    model = load_pruned(pruned_checkpoint).eval()
    spec, decisions = load_quantized(model, out)
    assert spec == QuantSpec("int4_wo", group_size=64) and "int4_wo-per_channel" in decisions.values()
    bad = subprocess.run([*cmd[:5], "quant.scheme=int2"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert bad.returncode != 0 and "unknown quantization scheme 'int2'" in bad.stderr


@pytest.mark.parametrize("scheme", ["int8_wo", "int4_wo"])
def test_model_bytes_counts_what_torch_save_writes(scheme, pruned_checkpoint, calib_ids):
    import io

    from nirvana.quantization import model_bytes

    def saved(m):
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        return buf.tell()

    model = load_pruned(pruned_checkpoint).eval()
    framing = 1024 * len(model.state_dict())  # torch.save: the same storages plus pickle framing per tensor
    dense = model_bytes(model)
    assert 0 <= saved(model) - dense < framing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize(model, QuantSpec(scheme, group_size=32), calib_ids)
    small = model_bytes(model)
    assert small < dense / 2
    assert 0 <= saved(model) - small < framing
