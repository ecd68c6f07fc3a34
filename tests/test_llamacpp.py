"""llama.cpp runs what the exporter writes (the opt-in extra: `make setup-llamacpp`; `make test-llamacpp` and CI run
these): logit parity with transformers on pruned models with heterogeneous layers, greedy generations, tokenization,
llama.cpp's quantizer and its fallbacks, perplexity on the protocol's windows, the OpenAI-compatible server.

Parity runs llama.cpp in its exact mode (nirvana.deploy.runtime: f32 KV cache, no flash attention): max |Δlogit|
≤ 1e-3 and the same argmax at every position."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: `make setup-llamacpp` builds it, "
                                        "`make test-llamacpp` runs these tests")
pytestmark = pytest.mark.llamacpp

from test_deploy import pruned_tiny  # noqa: E402

from nirvana.adapters import get_adapter  # noqa: E402
from nirvana.config import typed  # noqa: E402
from nirvana.deploy import export as ex  # noqa: E402
from nirvana.deploy import runtime  # noqa: E402
from nirvana.deploy.parity import logit_parity, parity_prompts, reference_greedy  # noqa: E402
from nirvana.tiny import pydoc_text, tiny_model, tiny_tokenizer  # noqa: E402

TOLERANCE = 1e-3


@torch.no_grad()
def hf_logits(model, ids) -> np.ndarray:
    return model(torch.tensor([ids])).logits[0].float().numpy()


def assert_parity(model, tokenizer, path, prompts=None, new_tokens: int = 12, n_ctx: int | None = None) -> dict:
    """Every prompt: max |Δlogit| ≤ TOLERANCE, the same argmax everywhere, the same greedy tokens."""
    report = logit_parity(model, tokenizer, path, new_tokens, n_threads=1, prompts=prompts)
    assert report["max_abs_logit_difference"] <= TOLERANCE, report["prompts"]
    assert report["argmax_agreement"] == 1.0 and report["greedy_equal"], report["prompts"]
    return report


def tiny_prompts(tokenizer, n: int = 3, length: int = 96) -> list[list[int]]:
    ids = tokenizer(pydoc_text()[:20000], add_special_tokens=False)["input_ids"]
    return [ids[i * 500: i * 500 + length] for i in range(n)]


@pytest.mark.parametrize("family,bias", [("llama", False), ("qwen2", False), ("qwen2", True), ("mistral", False)],
                         ids=["llama", "qwen2 (q/k/v biases)", "qwen2 + output biases (FLAP)", "mistral"])
def test_pruned_tiny_model_matches_transformers(tmp_path, family, bias):
    """Layers with 1, 2, 1 GQA groups and MLP widths 43, 96, 24; Qwen2's q/k/v biases (which `deci` adds) and
    FLAP's compensation biases on the attention and MLP outputs."""
    model, tokenizer = pruned_tiny(family, output_bias=bias), tiny_tokenizer()
    result = ex.export_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    assert_parity(model, tokenizer, result.path, tiny_prompts(tokenizer))


def test_rope_frequency_factors_match_llama3_scaling(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    model, tokenizer = tiny_model("llama", rope_parameters=rope), tiny_tokenizer()
    result = ex.export_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    assert_parity(model, tokenizer, result.path, tiny_prompts(tokenizer, 2, 200))


def test_attention_free_layer_is_what_deci_computes(tmp_path):
    """A layout with 0 heads in layer 1: llama.cpp's `deci` skips that layer's attention (and its norm) — the same
    as the transformers model with that layer's attention output zeroed."""
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    with torch.no_grad():
        get_adapter(model).layers()[1].attention.output_projection().param.zero_()
    layout = get_adapter(model).llama_layout()
    layout.query_heads[1] = layout.kv_heads[1] = 0
    path = ex.write_deci(tmp_path / "m.gguf", layout, ex.deci_tensors(model, layout), tokenizer)
    assert_parity(model, tokenizer, path, tiny_prompts(tokenizer, 2))


def test_flash_attention_and_f16_cache_are_what_breaks_exactness(tmp_path):
    """Why the exact mode exists: llama.cpp's deployment settings move logits by more than the tolerance."""
    model, tokenizer = pruned_tiny("llama"), tiny_tokenizer()
    path = ex.export_gguf(model, tokenizer, tmp_path / "m.gguf", "f32").path
    ids = tiny_prompts(tokenizer, 1)[0]
    fast = runtime.logits(runtime.load(path, n_ctx=128, n_threads=1, exact=False), ids)
    assert np.abs(fast - hf_logits(model, ids)).max() > TOLERANCE


def test_tokenization_matches_transformers(tmp_path):
    tokenizer = tiny_tokenizer()
    path = ex.export_gguf(tiny_model("llama"), tokenizer, tmp_path / "m.gguf", "f32").path
    llm = runtime.load(path, n_ctx=64, n_threads=1)
    for text in [pydoc_text()[5000:7000], "x = 12345 + 0.5  # numbers\n\n\ttabs  and  spaces!!", "<|endoftext|>Hi"]:
        assert runtime.tokenize(llm, text) == tokenizer(text)["input_ids"]


@pytest.mark.parametrize("gguf_type", ["q8_0", "q4_k_m"])
def test_quantized_export_uses_llama_cpps_quantizer_and_reports_fallbacks(tmp_path, gguf_type):
    model, tokenizer = pruned_tiny("llama"), tiny_tokenizer()
    result = ex.export_gguf(model, tokenizer, tmp_path / "m.gguf", gguf_type, n_threads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no f32 intermediate left behind
    predicted = ex.row_lengths_off_block(result.layout, gguf_type)
    assert {n for n in result.fallbacks if n.startswith("blk.")} == set(predicted)
    intended = {n for n, t in result.tensor_types.items() if t in ex.INTENDED[gguf_type]}
    assert not intended & set(result.fallbacks)
    if gguf_type == "q8_0":  # rows of 64 (hidden) and 32, 64 (attention outputs) are whole Q8_0 blocks
        assert result.fallbacks == {"blk.0.ffn_down.weight": "F16", "blk.2.ffn_down.weight": "F16"}
    else:  # no row of the tiny model is a whole k-quant block (256): every matrix falls back
        assert not intended and len(result.fallbacks) == 3 * 7 + 2
    f32 = ex.export_gguf(model, tokenizer, tmp_path / "f32.gguf", "f32")
    assert result.bytes < f32.bytes
    # the quantized model still computes the same function, roughly: relative logit error 0.06 (Q8_0) and 0.43
    # (Q4_K_M, all in fallback types) here, where a model with an un-permuted q/k (a wrong export) is at 1.26
    ids = tiny_prompts(tokenizer, 1)[0]
    ref, got = hf_logits(model, ids), runtime.logits(runtime.load(result.path, n_ctx=128, n_threads=1), ids)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < {"q8_0": 0.15, "q4_k_m": 0.7}[gguf_type]


def test_perplexity_through_llama_cpp_scores_the_protocols_windows(tmp_path):
    from nirvana.evaluation.llamacpp import gguf_perplexity
    from nirvana.evaluation.perplexity import evaluate_perplexity

    model, tokenizer = pruned_tiny("qwen2"), tiny_tokenizer()
    path = ex.export_gguf(model, tokenizer, tmp_path / "m.gguf", "f32").path
    texts = pydoc_text().split("\n\n")[:200]
    hf = evaluate_perplexity(model, tokenizer, "pydoc", 64, max_windows=6, texts=texts, progress=False)
    cpp = gguf_perplexity(path, tokenizer, "pydoc", 64, max_windows=6, texts=texts, n_threads=1, progress=False)
    assert (cpp.metric, cpp.n_windows, cpp.n_tokens, cpp.limit) == (hf.metric, 6, hf.n_tokens, "max_windows=6")
    np.testing.assert_allclose(cpp.window_nll, hf.window_nll, rtol=1e-4)


def test_run_with_the_deploy_stage_pairs_window_by_window_with_transformers(tmp_path):
    """experiments.run with deploy=llamacpp: a pruned tiny model exported as f32 and scored by llama.cpp on the
    windows transformers scores; the report pairs the two runs (--reference base) with a perplexity ratio of 1."""
    from fixture_text import PYDOC_FILE
    from hydra import compose, initialize_config_dir

    from experiments.run import run_experiment
    from nirvana.reporting.pairing import long_table
    from nirvana.results import read_rows

    base = ["model=tiny_llama", "calibration=pydoc", "calibration.n_samples=4", "calibration.seq_len=32",
            "pruner=nirvana", "sparsity=0.3", "measure_kl=false", "job.score_cache=null", "job.progress=false",
            "eval=ppl", f"eval.perplexity.datasets=[{PYDOC_FILE}]", "eval.perplexity.seq_len=[32,64]",
            "eval.perplexity.max_windows=5", f"job.results_file={tmp_path / 'rows.jsonl'}"]
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        hf_cfg = typed(compose(config_name="run", overrides=base))
        cpp_cfg = typed(compose(config_name="run", overrides=[*base, "deploy=llamacpp", "deploy.type=f32",
                                                              "deploy.keep=true"]))
    run_experiment(hf_cfg, tmp_path / "hf")
    rows = run_experiment(cpp_cfg, tmp_path / "cpp")
    assert {r["dtype"] for r in rows} == {"gguf-f32"} and (tmp_path / "cpp" / "model.gguf").is_file()
    fallbacks = next(r for r in rows if r["metric"] == "fallback_tensors")
    assert fallbacks["value"] == 0 and fallbacks["extra"]["runtime"] == "llama.cpp"
    table = long_table(read_rows(tmp_path / "rows.jsonl"), against="base")
    paired = table[table["column"].isin(["pydoc@32", "pydoc@64"]) & table["method"].str.endswith("[gguf-f32]")]
    assert len(paired) == 2 and (paired["reference"] == "nirvana (γ=3.36)").all()
    np.testing.assert_allclose(paired["delta"], 1.0, atol=1e-4)  # the perplexity ratio, window by window


def test_an_interrupted_deploy_run_resumes_at_its_unfinished_column(tmp_path, monkeypatch):
    """The export's rows and each llama.cpp perplexity column are pieces (nirvana.evaluation.pieces): a run killed
    at its second column computes only that column when launched again, with the rows an uninterrupted run has."""
    from fixture_text import PYDOC_FILE
    from hydra import compose, initialize_config_dir

    from experiments.run import run_experiment
    from nirvana.evaluation import llamacpp as cpp_mod

    conf = str(Path(__file__).resolve().parents[1] / "conf")

    def cfg(name):
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            return typed(compose(config_name="run", overrides=[
                "model=tiny_llama", "calibration=pydoc", "calibration.n_samples=4", "calibration.seq_len=32",
                "pruner=nirvana", "sparsity=0.3", "measure_kl=false", "job.score_cache=null", "job.progress=false",
                "eval=ppl", f"eval.perplexity.datasets=[{PYDOC_FILE}]", "eval.perplexity.seq_len=[32,64]",
                "eval.perplexity.max_windows=3", "deploy=llamacpp", "deploy.type=f32",
                f"job.results_file={tmp_path / name / 'rows.jsonl'}", f"job.partial_dir={tmp_path / 'partial'}"]))

    whole = run_experiment(cfg("whole"), tmp_path / "whole" / "run")
    real_ppl, real_export, seen = cpp_mod.ppl_mod.evaluate_perplexity, cpp_mod.export_mod.export_gguf, []

    def ppl(*a, **k):
        seen.append(a[3])
        if seen == [32, 64] and k.get("texts") is not None and not hasattr(ppl, "resumed"):
            raise KeyboardInterrupt
        return real_ppl(*a, **k)

    monkeypatch.setattr(cpp_mod.ppl_mod, "evaluate_perplexity", ppl)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg("resumed"), tmp_path / "resumed" / "run1")
    seen.clear()
    ppl.resumed, exports = True, []
    monkeypatch.setattr(cpp_mod.export_mod, "export_gguf", lambda *a, **k: (exports.append(1), real_export(*a, **k))[1])
    rows = run_experiment(cfg("resumed"), tmp_path / "resumed" / "run2")
    assert seen == [64] and exports == [1]  # the finished column is reused; the missing one needs the GGUF

    def numbers(rs):
        return sorted((r["task"], r["metric"], r["value"]) for r in rs if "seconds" not in r["metric"])

    assert numbers(rows) == numbers(whole)


def test_bench_section_times_pruned_against_dense_gguf(tmp_path):
    from hydra import compose, initialize_config_dir

    from experiments.bench import run_bench

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name="bench", overrides=[
            f"out_dir={tmp_path}", "progress=false", "sections=[llamacpp]", "llamacpp.model=tiny:llama",
            "llamacpp.sparsities=[0.5]", "llamacpp.types=[f32,q8_0]", "llamacpp.threads=[1]", "llamacpp.repeats=2",
            "llamacpp.shape={prompt_len: 16, new_tokens: 4}", f"llamacpp.score_cache={tmp_path}/cache",
            "llamacpp.calibration={source: pydoc, n_samples: 4, seq_len: 32, seed: 0}"])
    summary = run_bench(cfg)
    rows = json.loads((tmp_path / "llamacpp.json").read_text())["result"]["rows"]
    assert [(r["gguf_type"], r["threads"], r["sparsity"]) for r in rows] == [("f32", 1, 0.5), ("q8_0", 1, 0.5)]
    for r in rows:
        assert r["prefill_flop_ratio"] < 1 and r["gguf_bytes"] < r["dense_gguf_bytes"] and len(r["decode_s"]) == 2
        assert r["decode_efficiency"] == pytest.approx(r["decode_speedup"] * r["decode_flop_ratio"])
    assert "## Inference speed in llama.cpp" in summary.read_text()


# --- the real model (slow: the offline SmolLM2 asset) -----------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_pruned(smollm2, smollm2_calibration):
    """SmolLM2 dense and NIRVANA-pruned at s = 0.2 and 0.5 (γ = 3.36), scored once."""
    from nirvana.pruners import plan_from_scores, score_units
    from nirvana.surgery.cut import cut_copy

    scores = score_units(smollm2, smollm2_calibration, "nirvana")
    return {0.0: smollm2, **{s: cut_copy(smollm2, plan_from_scores(smollm2, scores, s, 3.36)) for s in (0.2, 0.5)}}


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5])
def test_smollm2_gguf_matches_transformers(tmp_path, smollm2_pruned, smollm2_tokenizer, sparsity):
    """Prose, a chat turn, code, a 200-token repetitive text: max |Δlogit| ≤ 1e-3, every argmax and 20 greedy
    tokens equal; llama.cpp tokenizes the same texts as transformers."""
    model, tokenizer = smollm2_pruned[sparsity], smollm2_tokenizer
    result = ex.export_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    if sparsity:
        assert len(set(result.layout.ffn_widths)) > 1 and len(set(result.layout.query_heads)) > 1
    assert_parity(model, tokenizer, result.path, new_tokens=20)
    llm = runtime.load(result.path, n_ctx=512, n_threads=1)
    for ids in parity_prompts(tokenizer):
        text = tokenizer.decode(ids)
        assert runtime.tokenize(llm, text) == tokenizer(text)["input_ids"] == ids
    for text in ["x = 12345 + 0.5  # digits\n\n\tand  spaces", "<|im_start|>user\nHi<|im_end|>", "naïve café ☕"]:
        assert runtime.tokenize(llm, text) == tokenizer(text)["input_ids"]


@pytest.mark.slow
def test_openai_server_serves_the_pruned_model_greedily(tmp_path, smollm2_pruned, smollm2_tokenizer):
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 (a free port) answers completions with the text
    transformers generates greedily, and stops with the block."""
    from nirvana.deploy.server import serve

    model = smollm2_pruned[0.5]
    path = ex.export_gguf(model, smollm2_tokenizer, tmp_path / "m.gguf", "f32").path
    prompts = ["The history of the Roman Empire began when", "def fibonacci(n):\n", "Paris is the capital of"]
    with serve(path, n_ctx=256, n_threads=2) as server:
        for prompt in prompts:
            ids = smollm2_tokenizer(prompt)["input_ids"]
            answer = server.complete(prompt, max_tokens=12)
            expected = smollm2_tokenizer.decode(reference_greedy(model, ids, 12))
            eos = smollm2_tokenizer.eos_token
            assert answer["choices"][0]["text"] == expected.split(eos)[0]  # the server stops at EOS
        process = server.process
    assert process.poll() is not None
