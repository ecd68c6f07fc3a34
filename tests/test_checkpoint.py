"""The pruned checkpoint is a product: it loads in a fresh process without our package."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from nirvana.pruners import prune
from nirvana.surgery.checkpoint import load_pruned, save_pruned
from nirvana.surgery.plan import PruningPlan
from nirvana.tiny import tiny_model

FRESH_LOAD = textwrap.dedent(
    """
    import sys
    sys.modules["nirvana"] = None  # any import of our package now raises ImportError
    import torch
    from transformers import AutoModelForCausalLM
    ckpt, ids_file, out_file = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.save(model(torch.load(ids_file)).logits, out_file)
    """
)


def fresh_process_logits(ckpt, ids, tmp_path):
    torch.save(ids, tmp_path / "ids.pt")
    subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, str(ckpt), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        check=True,
        cwd=tmp_path,
    )
    return torch.load(tmp_path / "out.pt")


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_fresh_process_load_gives_identical_logits(family, tmp_path, tokenizer, calib_ids):
    model = tiny_model(family)
    _, plan = prune(model, calib_ids, sparsity=0.5, gamma=1.0)
    with torch.no_grad():
        expected = model(calib_ids).logits
    ckpt = save_pruned(model, plan, tmp_path / "ckpt", tokenizer)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_nirvana.")
    assert len(config["per_layer_config"]) > 0  # widths in transformers' own field
    assert PruningPlan.load(ckpt).same_decision(plan)
    torch.testing.assert_close(fresh_process_logits(ckpt, calib_ids, tmp_path), expected, rtol=0, atol=0)


def test_load_pruned_in_process(tmp_path, calib_ids):
    model = tiny_model("llama")
    prune(model, calib_ids, sparsity=0.3, gamma=3.36)
    save_pruned(model, None, tmp_path / "c")
    again = load_pruned(tmp_path / "c").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(calib_ids).logits, model(calib_ids).logits, rtol=0, atol=0)
    assert again.generate(calib_ids[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_dense_model_saves_and_loads_the_same_way(tmp_path, calib_ids):
    model = tiny_model("qwen3")
    prune(model, calib_ids, sparsity=0.0, gamma=1.0)
    save_pruned(model, None, tmp_path / "c")
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(tmp_path / "c")(calib_ids).logits, model(calib_ids).logits)


def test_failed_save_leaves_nothing(tmp_path, calib_ids, monkeypatch):
    model = tiny_model("llama")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(model, "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        save_pruned(model, None, tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_flap_checkpoint_with_compensation_biases_loads_fresh(tmp_path, tokenizer, calib_ids):
    model = tiny_model("llama", num_hidden_layers=4, intermediate_size=96)
    _, plan = prune(model, calib_ids, pruner="flap", sparsity=0.4)
    with torch.no_grad():
        expected = model(calib_ids).logits
    ckpt = save_pruned(model, plan, tmp_path / "ckpt", tokenizer)
    assert json.loads((ckpt / "config.json").read_text())["nirvana_output_bias"] is True
    assert (ckpt / "pruning_plan.json.bias.safetensors").exists()
    torch.testing.assert_close(fresh_process_logits(ckpt, calib_ids, tmp_path), expected, rtol=0, atol=0)
