"""The GGUF exporter without llama.cpp: the model's Llama layout, the `deci` file it writes (read back with the
`gguf` package), the rotary permutation, the tokenizer metadata, and every refusal. The llama.cpp side (parity,
quantization, serving) is tests/test_llamacpp.py."""

import math

import gguf
import numpy as np
import pytest
import torch

from nirvana.adapters import get_adapter
from nirvana.deploy import export as ex
from nirvana.deploy import vocab
from nirvana.surgery.cut import add_output_biases, apply_plan
from nirvana.surgery.plan import LayerPlan, PruningPlan
from nirvana.tiny import tiny_model, tiny_tokenizer

# tiny models have 3 layers of 2 GQA groups (4 query heads) and 128 neurons
HETEROGENEOUS = [([1], list(range(0, 128, 3))), ([0, 1], list(range(96))), ([0], list(range(5, 29)))]


def pruned_tiny(family: str = "llama", output_bias: bool = False):
    """A tiny model whose layers kept different GQA groups and MLP widths (43, 96, 24: none a multiple of 32)."""
    model = tiny_model(family)
    plan = PruningPlan("tiny", "nirvana", 0.3, 1.0, 0, 0,
                       [LayerPlan(i, g, n, 2, 128) for i, (g, n) in enumerate(HETEROGENEOUS)])
    apply_plan(model, plan)
    if output_bias:  # FLAP's compensation biases on o_proj and down_proj
        torch.manual_seed(1)
        add_output_biases(get_adapter(model), {i: {"attention": torch.randn(64), "mlp": torch.randn(64)}
                                               for i in range(3)})
    return model


def fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items()}


def test_layout_of_a_pruned_model_has_every_layers_own_widths():
    layout = get_adapter(pruned_tiny("qwen2")).llama_layout()
    assert layout.query_heads == [2, 4, 2] and layout.kv_heads == [1, 2, 1] and layout.ffn_widths == [43, 96, 24]
    assert layout.head_dim == 16 and layout.tied_embeddings and not layout.differences and layout.rope_factors is None
    # q and k (weights and Qwen2's biases) are permuted with their own layer's head count; v never
    assert layout.rotary_rows["model.layers.0.self_attn.q_proj.bias"] == 2
    assert layout.rotary_rows["model.layers.1.self_attn.k_proj.weight"] == 2
    assert layout.rotary_rows["model.layers.2.self_attn.k_proj.weight"] == 1
    assert not any(".v_proj." in name for name in layout.rotary_rows) and len(layout.rotary_rows) == 12


def test_f32_export_writes_per_layer_arrays_head_size_and_tokenizer(tmp_path):
    model, tokenizer = pruned_tiny("llama"), tiny_tokenizer()
    result = ex.export_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    f = fields(result.path)
    assert f["general.architecture"] == "deci"
    assert f["deci.attention.head_count"] == [2, 4, 2] and f["deci.attention.head_count_kv"] == [1, 2, 1]
    assert f["deci.feed_forward_length"] == [43, 96, 24]
    # written explicitly: llama.cpp would otherwise derive it from layer 0 (64 / 2 heads = 32)
    assert f["deci.attention.key_length"] == f["deci.attention.value_length"] == 16
    assert f["tokenizer.ggml.pre"] == "gpt-2" and len(f["tokenizer.ggml.tokens"]) == 512
    assert f["tokenizer.ggml.merges"] and f["tokenizer.ggml.add_bos_token"] is False
    types = ex.read_tensor_types(result.path)
    assert types["blk.2.ffn_down.weight"] == ("F32", (24, 64))  # GGUF order: row length first
    assert types["blk.0.attn_q.weight"] == ("F32", (64, 32)) and "output.weight" in types  # llama: untied head
    assert result.fallbacks == {} and len(types) == 3 * 9 + 3


def test_tied_embeddings_write_no_output_tensor_and_biases_are_kept(tmp_path):
    result = ex.export_gguf(pruned_tiny("qwen2", output_bias=True), tiny_tokenizer(), tmp_path / "m.gguf", "f16")
    types = ex.read_tensor_types(result.path)
    assert "output.weight" not in types  # llama.cpp reuses token_embd.weight
    assert types["blk.0.attn_q.bias"] == ("F32", (32,)) and types["blk.1.attn_k.bias"] == ("F32", (32,))
    assert types["blk.2.attn_output.bias"] == ("F32", (64,)) and types["blk.2.ffn_down.bias"] == ("F32", (64,))
    assert types["blk.1.ffn_up.weight"][0] == "F16" and types["blk.1.ffn_norm.weight"][0] == "F32"


def _rope_half(x, pos, theta=10000.0):
    """transformers' rotate-half RoPE of one head's vector x [d] at position pos."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    cos, sin = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[: d // 2], x[d // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin])


def _rope_interleaved(x, pos, theta=10000.0):
    """llama.cpp's plain RoPE (pairs 2j, 2j+1)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    cos, sin = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[0::2], x[1::2]
    out = np.empty_like(x)
    out[0::2], out[1::2] = a * cos - b * sin, b * cos + a * sin
    return out


def test_rotary_permutation_makes_interleaved_rope_equal_rotate_half():
    """Projecting with permuted rows then rotating llama.cpp's way = transformers' rotation, permuted: the q·k
    scores (permutation-invariant within a head) are the same."""
    rng = np.random.default_rng(0)
    heads, d, hidden = 3, 8, 5
    w = rng.normal(size=(heads * d, hidden))
    h = rng.normal(size=hidden)
    permuted = ex.permute_rotary(w, heads)
    for pos in (0, 3, 17):
        q_hf = (w @ h).reshape(heads, d)
        q_cpp = (permuted @ h).reshape(heads, d)
        for i in range(heads):
            expected = ex.permute_rotary(_rope_half(q_hf[i], pos)[:, None], 1)[:, 0]
            np.testing.assert_allclose(_rope_interleaved(q_cpp[i], pos), expected, atol=1e-12)
    assert not np.allclose(permuted, w)


def test_pre_tokenizer_names():
    spec = vocab.check_tokenizer(tiny_tokenizer())
    assert vocab.llama_cpp_pre(spec) == "gpt-2"
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert vocab.llama_cpp_pre({"pre_tokenizer": digits}) == "smollm"
    qwen = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": vocab.QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {**byte_level, "use_regex": False}]}
    assert vocab.llama_cpp_pre({"pre_tokenizer": qwen}) == "qwen2"
    with pytest.raises(ValueError, match="pre-tokenizer .*Metaspace"):
        vocab.llama_cpp_pre({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}})


def test_token_table_pads_the_embedding_rows_and_marks_special_tokens():
    tokens, types = vocab.token_table(tiny_tokenizer(), 520)
    assert tokens[0] == "<|endoftext|>" and types[0] == gguf.TokenType.CONTROL
    assert tokens[515] == "[PAD515]" and types[515] == gguf.TokenType.UNUSED and types[100] == gguf.TokenType.NORMAL
    with pytest.raises(ValueError, match="token id 511 but the model's embedding only 500 rows"):
        vocab.token_table(tiny_tokenizer(), 500)


def test_fallback_prediction_names_the_matrices_off_the_quantizers_block():
    layout = get_adapter(pruned_tiny("llama")).llama_layout()
    assert ex.row_lengths_off_block(layout, "f16") == {}
    # Q8_0 blocks are 32 values along a row: only ffn_down's rows (the kept widths 43, 96, 24) can be off
    assert ex.row_lengths_off_block(layout, "q8_0") == {"blk.0.ffn_down.weight": 43, "blk.2.ffn_down.weight": 24}
    # k-quants need 256: hidden 64 and every width are off
    assert len(ex.row_lengths_off_block(layout, "q4_k_m")) == 3 * 7


@pytest.mark.parametrize("family,message", [("qwen3", "q_norm/k_norm"), ("mistral", "sliding-window attention")])
def test_architectures_llama_cpp_would_compute_differently_are_refused(tmp_path, family, message):
    overrides = {"sliding_window": 64} if family == "mistral" else {}
    model = tiny_model(family, **overrides)
    with pytest.raises(ValueError, match=message):
        ex.export_gguf(model, tiny_tokenizer(), tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_a_sliding_window_as_long_as_the_context_is_exported(tmp_path):
    model = tiny_model("mistral", sliding_window=256)  # never slides within max_position_embeddings = 256
    assert ex.export_gguf(model, tiny_tokenizer(), tmp_path / "m.gguf").layout.differences == []


def test_encoder_decoders_are_refused(tmp_path):
    from nirvana.tiny import tiny_t5_model

    with pytest.raises(ValueError, match="not a stack of Llama decoder blocks"):
        ex.export_gguf(tiny_t5_model("t5"), tiny_tokenizer(), tmp_path / "m.gguf")


def test_an_mlp_free_layer_with_attention_is_refused_and_attention_free_layers_are_written(tmp_path):
    model = tiny_model("llama")
    layout = get_adapter(model).llama_layout()
    layout.ffn_widths[1] = 0
    with pytest.raises(ValueError, match="layer 1 keeps attention .* but no MLP neuron"):
        ex.check_layout(layout)
    layout.ffn_widths[1], layout.query_heads[1], layout.kv_heads[1] = 128, 0, 0
    path = ex.write_deci(tmp_path / "m.gguf", layout, ex.deci_tensors(model, layout), tiny_tokenizer())
    types = ex.read_tensor_types(path)
    assert not [n for n in types if n.startswith("blk.1.attn_")] and "blk.1.ffn_norm.weight" in types
    assert fields(path)["deci.attention.head_count"] == [4, 0, 4]


def test_a_layout_that_contradicts_the_tensors_is_refused(tmp_path):
    model = pruned_tiny("llama")
    layout = get_adapter(model).llama_layout()
    layout.ffn_widths[2] = 32
    with pytest.raises(ValueError, match=r"blk.2.ffn_gate.weight has shape \(24, 64\), but layer 2's widths"):
        ex.write_deci(tmp_path / "m.gguf", layout, ex.deci_tensors(model), tiny_tokenizer())


def test_bad_requests_fail_before_any_work(tmp_path):
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(ValueError, match=r"GGUF type 'q5_0': choose one of \['f32', 'f16', 'q8_0', 'q4_k_m'\]"):
        ex.export_gguf(model, tokenizer, tmp_path / "m.gguf", "q5_0")
    (tmp_path / "old.gguf").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        ex.export_gguf(model, tokenizer, tmp_path / "old.gguf")


def test_quantized_types_without_llama_cpp_say_how_to_install_it(tmp_path, monkeypatch):
    def missing():
        raise RuntimeError(ex.runtime.INSTALL_HINT)

    monkeypatch.setattr(ex.runtime, "require", missing)
    with pytest.raises(RuntimeError, match="make setup-llamacpp"):
        ex.export_gguf(tiny_model("llama"), tiny_tokenizer(), tmp_path / "m.gguf", "q8_0")
    assert list(tmp_path.iterdir()) == []


def test_llama3_rope_scaling_becomes_frequency_factors(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model = tiny_model("llama", rope_parameters=rope)
    layout = get_adapter(model).llama_layout()
    assert layout.rope_factors is not None and layout.rope_factors[0] == pytest.approx(1.0)
    assert layout.rope_factors[-1] == pytest.approx(8.0)
    result = ex.export_gguf(model, tiny_tokenizer(), tmp_path / "m.gguf")
    assert ex.read_tensor_types(result.path)["rope_freqs.weight"] == ("F32", (8,))
    assert math.isclose(fields(result.path)["deci.rope.freq_base"], 500000.0)


# --- the entry point: python -m experiments.export ---------------------------------------------------------------
def export_cfg(*overrides):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from nirvana.config import typed

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return typed(compose(config_name="export", overrides=["model=tiny_llama", *overrides]))


def test_export_entry_point_writes_a_pruned_checkpoint(tmp_path):
    import json

    import experiments.export as export_cli
    from nirvana.surgery.checkpoint import save_pruned

    save_pruned(pruned_tiny("qwen2"), None, tmp_path / "ckpt", tiny_tokenizer())
    summary = export_cli.run_export(export_cfg(f"model.path={tmp_path / 'ckpt'}", "dtype=f16"), tmp_path / "run")
    assert (tmp_path / "run" / "model-f16.gguf").is_file() and summary["tensor_types"] == {"F16": 22, "F32": 16}
    assert summary["query_heads"] == [2, 4, 2] and summary["ffn_widths"] == [43, 96, 24]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["gguf_type"] == "f16"


@pytest.mark.parametrize("overrides,error", [
    (["dtype=q5_k"], "GGUF type 'q5_k'"),
    (["format=onnx"], r"format='onnx': choose one of \['gguf'\]"),
    (["out=model.bin"], "ends in .gguf"),
])
def test_export_entry_point_refuses_bad_requests_before_loading(tmp_path, monkeypatch, overrides, error):
    import experiments.export as export_cli

    monkeypatch.setattr(export_cli, "load_from_config", lambda *a, **k: pytest.fail("model loaded before checks"))
    with pytest.raises(ValueError, match=error):
        export_cli.run_export(export_cfg(*overrides), tmp_path)


def test_export_entry_point_refuses_a_folder_that_is_no_checkpoint(tmp_path, monkeypatch):
    import experiments.export as export_cli

    monkeypatch.setattr(export_cli, "load_from_config", lambda *a, **k: pytest.fail("model loaded before checks"))
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        export_cli.run_export(export_cfg(f"model.path={tmp_path / 'nothing'}"), tmp_path)


# --- the deploy stage of experiments.run (conf/deploy/llamacpp.yaml): its checks need no llama.cpp ----------------
def run_cfg(*overrides):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from nirvana.config import typed

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return typed(compose(config_name="run", overrides=["model=tiny_llama", *overrides]))


@pytest.mark.parametrize("overrides,error", [
    (["deploy.type=q5_0"], "GGUF type 'q5_0'"),
    (["deploy.threads=0"], "threads must be ≥ 1"),
    (["eval=quick"], "perplexity only"),
    (["quant=int8_wo"], "drop quant"),
])
def test_deploy_stage_refuses_what_it_cannot_evaluate(tmp_path, overrides, error):
    from nirvana.evaluation.llamacpp import DeployStage

    with pytest.raises(ValueError, match=error):  # when the config is built, or when the stage is: before any model
        DeployStage.from_config(run_cfg("eval=ppl", "deploy=llamacpp", *overrides), tmp_path)
    assert DeployStage.from_config(run_cfg("eval=ppl"), tmp_path) is None


def test_an_unknown_deploy_option_fails_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="deploy.flash"):
        run_cfg("deploy=llamacpp", "deploy.flash=true")


