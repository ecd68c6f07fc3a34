"""T5 encoder–decoders end to end: adapter, relative-bias bookkeeping, seq2seq target, checkpoint, evaluation.

Both MLP variants on tiny random models: T5 v1.0 (ReLU wi/wo, tied head) and v1.1 / Flan-T5 (gated wi_0/wi_1).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers.models.t5.modeling_t5 import T5Attention

from nirvana.adapters import get_adapter
from nirvana.adapters.t5 import seq2seq_logits, split_windows
from nirvana.allocation import budget_for
from nirvana.pruners import compute_plan, prune
from nirvana.surgery.checkpoint import load_pruned, save_pruned
from nirvana.surgery.cut import apply_plan, count_parameters
from nirvana.surgery.masking import masked
from nirvana.surgery.plan import LayerPlan, PruningPlan
from nirvana.tiny import TINY_T5_VARIANTS, tiny_t5_model

ROOT = Path(__file__).resolve().parents[1]
H, D_FF, LAYERS = 4, 128, 3  # the tiny configs: 4 heads, d_ff 128, 3 encoder + 3 decoder blocks


@pytest.fixture(params=TINY_T5_VARIANTS)
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def ids(tokenizer):
    """8 windows of 32 tokens of pydoc text (the calibration / probe batch)."""
    from nirvana.tiny import pydoc_text

    flat = tokenizer(pydoc_text()[:100_000], return_tensors="pt").input_ids[0]
    starts = torch.arange(8) * (flat.numel() // 8)
    return torch.stack([flat[s : s + 32] for s in starts.tolist()])


def full_forward(model, ids):
    """Logits of an independent forward (not the adapter's): encoder on ids[:, :20], decoder on ids[:, 20:]."""
    with torch.no_grad():
        return model(input_ids=ids[:, :20], decoder_input_ids=ids[:, 20:]).logits


def bias_tables(model):
    return [model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight,
            model.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight]


# --- adapter ---------------------------------------------------------------------------------------------
def test_adapter_units_and_costs(variant):
    model = tiny_t5_model(variant)
    layers = get_adapter(model).layers()
    d = model.config.d_model
    assert [layer.stack for layer in layers] == ["encoder"] * LAYERS + ["decoder"] * LAYERS
    assert [layer.index for layer in layers] == list(range(2 * LAYERS))
    for layer in layers:
        dec = layer.stack == "decoder"
        assert layer.attention.n_units == (2 * H if dec else H)
        assert layer.attention.parts() == ([(0, H), (H, 2 * H)] if dec else [(0, H)])
        assert layer.attention.unit_cost == 4 * d * model.config.d_kv  # q, k, v rows + o columns of one head
        assert layer.mlp.n_units == D_FF
        assert layer.mlp.unit_cost == (2 if variant == "t5" else 3) * d
    # every attention / MLP matrix is a unit parameter; the relative-bias tables and embeddings are not
    prunable = {id(p) for p in get_adapter(model).prunable_parameters()}
    n_matrices = LAYERS * (4 + 2) + LAYERS * (8 + 2) + (2 * LAYERS if variant == "flan_t5" else 0)
    assert len(prunable) == n_matrices
    assert not any(id(t) in prunable for t in bias_tables(model))


def test_sparsity_zero_keeps_logits_identical(variant, ids):
    model = tiny_t5_model(variant)
    before, adapter_before = full_forward(model, ids), get_adapter(model).logits(ids).detach()
    _, plan = prune(model, ids, sparsity=0.0, gamma=1.0)
    assert plan.pruned_groups == 0 and plan.pruned_neurons == 0
    assert plan.params_after == plan.params_before == count_parameters(model)
    torch.testing.assert_close(full_forward(model, ids), before, rtol=0, atol=0)
    torch.testing.assert_close(get_adapter(model).logits(ids).detach(), adapter_before, rtol=0, atol=0)


def test_pruned_widths_counts_and_config(variant, ids):
    model = tiny_t5_model(variant)
    _, plan = prune(model, ids, sparsity=0.3, gamma=1.0)
    assert count_parameters(model) == plan.params_after < plan.params_before
    assert plan.pruned_groups > 0 and plan.pruned_neurons > 0
    spec = model.config.nirvana_t5_layers
    blocks = list(model.encoder.block) + list(model.decoder.block)
    for i, (block, lp) in enumerate(zip(blocks, plan.layers)):
        dec = i >= LAYERS
        entry = spec["decoder" if dec else "encoder"][i % LAYERS]
        self_kept = [g for g in lp.kept_groups if g < H]
        cross_kept = [g - H for g in lp.kept_groups if g >= H]
        assert self_kept and (cross_kept or not dec)  # each attention module keeps ≥ 1 head
        assert entry["self_attention_heads"] == self_kept
        assert block.layer[0].SelfAttention.q.out_features == len(self_kept) * 16
        assert block.layer[0].SelfAttention.o.in_features == len(self_kept) * 16
        if dec:
            assert entry["cross_attention_heads"] == cross_kept
            assert block.layer[1].EncDecAttention.k.out_features == len(cross_kept) * 16
        ff = block.layer[-1].DenseReluDense
        assert ff.wo.in_features == entry["d_ff"] == len(lp.kept_neurons)
        assert entry["d_ff"] % 8 == 0
        for name in ("wi", "wi_0", "wi_1"):
            if hasattr(ff, name):
                assert getattr(ff, name).out_features == entry["d_ff"]
    for t in bias_tables(model):  # shared by the stack's layers: never cut
        assert t.shape == (model.config.relative_attention_num_buckets, H)
    assert torch.isfinite(full_forward(model, ids)).all()


# --- the relative position bias ----------------------------------------------------------------------------
# Each layer keeps 3 of 4 heads but a different 3, so a stock T5 forward runs (shapes agree) and the bias
# handed on from layer 0 has the wrong heads — the bug this plan is built to expose.
KEEP = {0: [1, 2, 3], 1: [0, 1, 2], 2: [0, 2, 3]}
CROSS_KEEP = {0: [0, 1, 3], 1: [1, 2, 3], 2: [0, 1, 2]}


def hand_plan(model) -> PruningPlan:
    layers = []
    for i in range(2 * LAYERS):
        j = i % LAYERS
        groups = KEEP[j] + ([H + h for h in CROSS_KEEP[j]] if i >= LAYERS else [])
        n = 2 * H if i >= LAYERS else H
        layers.append(LayerPlan(i, groups, list(range(0, D_FF, 2)), n, D_FF))
    n = count_parameters(model)
    return PruningPlan("tiny", "hand", 0.0, 1.0, n, n, layers)


def test_relative_bias_follows_each_layers_heads(variant, ids):
    """Pruning heads (surgery) must give the outputs of the dense model with those heads masked to zero."""
    model = tiny_t5_model(variant)
    with torch.no_grad():
        for t in bias_tables(model):
            t.mul_(10.0)  # make the position bias matter, so wrong heads show
    plan = hand_plan(model)
    prompt = ids[:2, :12]
    with torch.no_grad(), masked(model, plan):
        expected = full_forward(model, ids)
        expected_adapter = get_adapter(model).logits(ids)
        expected_gen = model.generate(prompt, max_new_tokens=8, do_sample=False)
    apply_plan(model, plan)
    torch.testing.assert_close(full_forward(model, ids), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(get_adapter(model).logits(ids), expected_adapter, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.generate(prompt, max_new_tokens=8, do_sample=False), expected_gen)  # KV cache path

    # The stock alternative — slice layer 0's table to layer 0's heads and let the stack hand it on —
    # runs (every layer has 3 heads) but gives later layers the wrong heads' bias.
    for stack in (model.encoder, model.decoder):
        for block in stack.block:
            for sub in block.layer[:-1]:
                attn = next(m for m in sub.children() if isinstance(m, T5Attention))
                attn.__class__ = T5Attention
        first = stack.block[0].layer[0].SelfAttention
        table = first.relative_attention_bias.weight.detach()[:, KEEP[0]]
        first.relative_attention_bias = torch.nn.Embedding.from_pretrained(table)
    wrong = full_forward(model, ids)
    assert (wrong - expected).abs().max() > 1e-2


# --- scorers and the seq2seq target --------------------------------------------------------------------------
def test_seq2seq_target_is_the_decoders_continuation(variant, ids):
    model = tiny_t5_model(variant)
    enc, labels = split_windows(ids, model.config.eos_token_id)
    assert torch.equal(enc[:, :16], ids[:, :16]) and (enc[:, 16] == model.config.eos_token_id).all()
    assert torch.equal(labels, ids[:, 16:])
    with torch.no_grad():
        reference = model(input_ids=enc, labels=labels)  # HF's own teacher forcing and seq2seq loss
        adapter = get_adapter(model)
        torch.testing.assert_close(adapter.logits(ids), reference.logits)
        torch.testing.assert_close(adapter.lm_loss(ids), reference.loss)
        logits, lab = seq2seq_logits(model, ids)
        assert logits.shape == (8, 16, model.config.vocab_size) and torch.equal(lab, labels)


@pytest.mark.parametrize("pruner", ["nirvana", "taylor", "magnitude", "random"])
def test_every_scoring_pruner_plans_and_cuts(pruner, ids):
    model = tiny_t5_model("flan_t5")
    _, plan = prune(model, ids, pruner=pruner, sparsity=0.3, gamma=2.0)
    assert plan.pruner == pruner and count_parameters(model) == plan.params_after
    # the budget is NIRVANA's closed form on the model's totals (heads of both stacks, neurons of both)
    budget = budget_for(get_adapter(tiny_t5_model("flan_t5")).layers(), 0.3, 2.0)
    n_parts = LAYERS + 2 * LAYERS  # the ≥1-head guard may spare one head per attention module
    assert budget.k_attention - n_parts <= plan.pruned_groups <= budget.k_attention
    assert budget.k_mlp - 7 * 2 * LAYERS <= plan.pruned_neurons <= budget.k_mlp  # widths rounded up to 8s
    assert torch.isfinite(full_forward(model, ids)).all()


def test_pool_per_stack_budgets_each_stack(ids):
    model = tiny_t5_model("t5")
    layers = get_adapter(model).layers()
    plan = compute_plan(model, ids, "random", sparsity=0.4, gamma=1.0, pool="stack", round_to=1, seed=3)
    assert plan.extra["pool"] == "stack"
    for stack in ("encoder", "decoder"):
        idx = [i for i, layer in enumerate(layers) if layer.stack == stack]
        budget = budget_for([layers[i] for i in idx], 0.4, 1.0)
        heads = sum(plan.layers[i].n_groups - len(plan.layers[i].kept_groups) for i in idx)
        neurons = sum(plan.layers[i].n_neurons - len(plan.layers[i].kept_neurons) for i in idx)
        assert (heads, neurons) == (budget.k_attention, budget.k_mlp)  # random scores: no ties, no guard
    with pytest.raises(ValueError, match="unknown pool"):
        compute_plan(model, ids, "random", sparsity=0.4, pool="layer")


@pytest.mark.parametrize("pruner", ["wanda_sp", "flap"])
def test_activation_pruners_refuse_t5_clearly(pruner, ids):
    model = tiny_t5_model("t5")
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=f"pruner '{pruner}' does not apply to t5") as err:
        compute_plan(model, ids, pruner, sparsity=0.2)
    for name in ("nirvana", "magnitude", "random", "taylor"):
        assert name in str(err.value)
    assert calls == []


def test_kl_selection_measure_runs_on_t5(ids):
    from nirvana.probe import kl_to_dense

    model = tiny_t5_model("t5")
    plan = compute_plan(model, ids[:4], "nirvana", sparsity=0.3)
    kl = kl_to_dense(model, plan, ids[4:], batch_size=2)
    assert 0 < kl < float("inf")
    assert kl == pytest.approx(kl_to_dense(model, plan, ids[4:], batch_size=2, forward="masked"), rel=1e-4)
    assert kl == kl_to_dense(model, plan, ids[4:], batch_size=2, forward="cut")  # auto cut: the copy fits


# --- checkpoint, generation --------------------------------------------------------------------------------
FRESH_LOAD = textwrap.dedent(
    """
    import sys
    sys.modules["nirvana"] = None  # any import of our package now raises ImportError
    import torch
    from transformers import AutoModelForSeq2SeqLM
    ckpt, ids_file, out_file = sys.argv[1:4]
    model = AutoModelForSeq2SeqLM.from_pretrained(ckpt, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.load(ids_file)
    with torch.no_grad():
        logits = model(input_ids=ids[:, :20], decoder_input_ids=ids[:, 20:]).logits
    gen = model.generate(ids[:2, :12], max_new_tokens=8, do_sample=False)
    torch.save({"logits": logits, "generate": gen, "class": type(model).__name__}, out_file)
    """
)


def test_save_and_fresh_process_load_give_identical_logits(variant, tmp_path, tokenizer, ids):
    model = tiny_t5_model(variant)
    _, plan = prune(model, ids, sparsity=0.3, gamma=1.0)
    expected = full_forward(model, ids)
    expected_gen = model.generate(ids[:2, :12], max_new_tokens=8, do_sample=False)
    ckpt = save_pruned(model, plan, tmp_path / "ckpt", tokenizer)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["auto_map"] == {"AutoModelForSeq2SeqLM": "modeling_nirvana.NirvanaT5ForConditionalGeneration"}
    assert config["nirvana_t5_layers"] == model.config.nirvana_t5_layers
    assert PruningPlan.load(ckpt).same_decision(plan)
    torch.save(ids, tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", FRESH_LOAD, str(ckpt), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
                   check=True, cwd=tmp_path)
    out = torch.load(tmp_path / "out.pt")
    assert out["class"] == "NirvanaT5ForConditionalGeneration"
    torch.testing.assert_close(out["logits"], expected, rtol=0, atol=0)
    assert torch.equal(out["generate"], expected_gen)


def test_hand_pruned_checkpoint_loads_in_process(tmp_path, ids):
    """Heads differing per layer (the relative-bias case) survive save/load; load_pruned picks seq2seq."""
    model = tiny_t5_model("flan_t5")
    apply_plan(model, hand_plan(model))
    save_pruned(model, None, tmp_path / "c")
    again = load_pruned(tmp_path / "c").eval()
    torch.testing.assert_close(full_forward(again, ids), full_forward(model, ids), rtol=0, atol=0)


def test_generate_after_pruning(variant, ids):
    model = tiny_t5_model(variant)
    prune(model, ids, sparsity=0.5, gamma=1.0)
    prompt = ids[:2, :10]
    a = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    b = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert a.shape == (2, 7) and torch.equal(a, b)  # decoder start token + 6 new ones


# --- evaluation --------------------------------------------------------------------------------------------
def test_seq2seq_perplexity_protocol(tokenizer):
    import math

    from nirvana.evaluation.perplexity import cut_windows, encode, evaluate_perplexity
    from nirvana.tiny import pydoc_text

    model = tiny_t5_model("t5")
    texts = [pydoc_text()[:20_000]]
    r = evaluate_perplexity(model, tokenizer, "pydoc", seq_len=32, max_windows=6, texts=texts, progress=False)
    assert r.metric == "ppl/pydoc@16+16" and r.prefix_len == 16
    assert (r.n_windows, r.n_tokens) == (6, 6 * 16)
    windows = cut_windows(encode(texts, tokenizer), 32, max_windows=6)
    with torch.no_grad():
        loss = model(input_ids=split_windows(windows, 0)[0], labels=windows[:, 16:].contiguous()).loss
    assert r.ppl == pytest.approx(math.exp(float(loss)), rel=1e-5)


@pytest.mark.slow  # reads the built benchmark data (make assets)
def test_zeroshot_uses_the_seq2seq_backend(tokenizer, ids):
    from nirvana.evaluation import zeroshot as Z

    model = tiny_t5_model("flan_t5")
    prune(model, ids, sparsity=0.3)
    assert Z.lm_eval_backend(model) == "seq2seq"
    res = Z.evaluate_zeroshot(model, tokenizer, ["arc_easy"], limit=3, batch_size=4, max_length=256,
                              bootstrap_iters=0)
    assert res.extra["backend"] == "seq2seq" and res.scores[0].n == 3
    assert res.scores[0].value in {0, 1 / 3, 2 / 3, 1}


def test_cli_prunes_saves_and_the_checkpoint_loads_fresh(tmp_path, ids):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.prune", "model=tiny_flan_t5", "calibration=pydoc",
         "calibration.n_samples=4", "calibration.seq_len=32", "sparsity=0.3", f"save_dir={tmp_path / 'ck'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "nirvana s=0.3" in out.stdout
    torch.save(ids, tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", FRESH_LOAD, str(tmp_path / "ck"), str(tmp_path / "ids.pt"),
                    str(tmp_path / "out.pt")], check=True, cwd=tmp_path)
    plan = PruningPlan.load(tmp_path / "ck")
    assert plan.pruner == "nirvana" and len(plan.layers) == 2 * LAYERS
    # the fresh process's logits are those of the plan applied to the same dense model in this process
    expected = full_forward(apply_plan(tiny_t5_model("flan_t5"), plan), ids)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt")["logits"], expected, rtol=0, atol=1e-5)


def test_speed_and_flops_of_an_encoder_decoder(ids):
    """Prefill = encoder + first decoder step, decode = cached decoder steps; FLOPs by hand (flan: gated)."""
    from nirvana.evaluation import speed as S

    dense = tiny_t5_model("flan_t5")
    attn, ff, head = 4 * 64 * 64, 3 * 64 * 128, 512 * 64
    enc, dec, cross_kv = LAYERS * (attn + ff), LAYERS * (2 * attn + ff), LAYERS * 2 * 64 * 64
    prefill, decode = S.flops_per_token(dense, prompt_len=16, new_tokens=4)
    assert prefill == 2 * (enc + cross_kv) + 4 * LAYERS * 64 * 16
    assert decode == 2 * (dec - cross_kv + head) + 4 * LAYERS * 64 * 4 / 2 + 4 * LAYERS * 64 * 16
    assert S.dense_twin(dense) is None

    model = tiny_t5_model("flan_t5")
    prune(model, ids, sparsity=0.5, gamma=1.0)
    twin = S.dense_twin(model)
    assert S.flops_per_token(twin, 16, 4) == (prefill, decode)
    out = S.compare_speed(model, twin, batch_size=1, prompt_len=16, new_tokens=4, repeats=1)
    assert 0 < out["prefill_flop_ratio"] < 1 and 0 < out["decode_flop_ratio"] < 1
    assert out["decode_tok_s"] > 0 and out["prefill_tok_s"] > 0
