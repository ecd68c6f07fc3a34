"""LoRA recovery on tiny pruned models: it learns, merges into a checkpoint that loads without our package,
resumes exactly where it stopped, and the Hydra entry point writes before/after rows."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from nirvana import recovery as rec
from nirvana.config import typed
from nirvana.pruners import prune
from nirvana.results import read_rows
from nirvana.surgery.checkpoint import save_pruned
from nirvana.surgery.plan import PruningPlan
from nirvana.tiny import pydoc_text, tiny_model

ROOT = Path(__file__).resolve().parents[1]
CUTOFF = 192  # the tiny byte-level tokenizer spends ~70 tokens on the Alpaca template alone
FAST = dict(lr=1e-2, micro_batch_size=4, grad_accum=1, cutoff=CUTOFF, warmup_steps=0, eval_every=None,
            val_set_size=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two OpenMP threads
    competing with other processes made a 5-step run 100× slower (12 s instead of 0.1 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def passages_file(tmp_path_factory):
    """Passages of real text (pydoc topics) as JSONL, the format of the offline text sets."""
    paras = [" ".join(p.split()[:40]) for p in pydoc_text().split("\n\n") if len(p.split()) > 24][:40]
    path = tmp_path_factory.mktemp("text") / "passages.jsonl"
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in paras))
    return path


@pytest.fixture(scope="module")
def examples(passages_file):
    return rec.local_examples([str(passages_file)])


def mean_token_loss(model, tokenized) -> float:
    """Mean next-token NLL over the labelled tokens of tokenized examples, one at a time (no padding)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in tokenized:
            ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]])
            logits = model(input_ids=ids).logits[:, :-1]
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(),
                                                             ignore_index=rec.IGNORE, reduction="sum"))
            count += int((labels[:, 1:] != rec.IGNORE).sum())
    return total / count


def pruned_tiny(calib_ids, family="llama"):
    model = tiny_model(family)
    _, plan = prune(model, calib_ids, sparsity=0.5, gamma=1.0)
    return model, plan


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_lora_wraps_every_pruned_projection_at_its_own_width(family, calib_ids):
    model, plan = pruned_tiny(calib_ids, family)
    peft_model = rec.apply_lora(model, rec.LoraSettings())  # raises if a shape does not fit its layer
    for i, layer in enumerate(peft_model.get_base_model().model.layers):
        down = layer.mlp.down_proj
        assert down.lora_A["default"].weight.shape == (8, len(plan.layers[i].kept_neurons))
        assert layer.self_attn.q_proj.lora_B["default"].weight.shape[0] == layer.self_attn.q_proj.base_layer.out_features
    trainable = {n.split(".")[-3] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}


def test_a_few_lora_steps_lower_the_training_loss(calib_ids, tokenizer, examples, tmp_path):
    model, _ = pruned_tiny(calib_ids)
    train = examples[:8]
    settings = rec.LoraSettings(**FAST | {"max_steps": 5, "lr": 2e-2, "dropout": 0.0})
    tokenized, _ = rec.tokenize_examples(tokenizer, train, CUTOFF)
    before = mean_token_loss(model, tokenized)
    merged, result, _ = rec.recover(model, tokenizer, train, [], settings, tmp_path, progress=False)
    after = mean_token_loss(merged, tokenized)
    assert result.steps == 5 and after < before - 0.5, (before, after)


def test_a_non_finite_loss_stops_recovery_naming_the_step(calib_ids, tokenizer, examples, tmp_path):
    model, _ = pruned_tiny(calib_ids)
    with torch.no_grad():
        model.model.norm.weight[0] = math.inf  # frozen, outside every LoRA target: the loss is NaN from step 1
    settings = rec.LoraSettings(**FAST | {"max_steps": 3})
    train, _ = rec.tokenize_examples(tokenizer, examples[:8], CUTOFF)
    with pytest.raises(ValueError, match="the training loss at step 1 is nan; lower recovery.lr"):
        rec.train_lora(rec.apply_lora(model, settings), train, [], settings, tmp_path / "work", progress=False)


def test_merged_checkpoint_loads_fresh_with_the_peft_models_logits(calib_ids, tokenizer, examples, tmp_path):
    model, plan = pruned_tiny(calib_ids)
    settings = rec.LoraSettings(**FAST | {"max_steps": 3})
    train, _ = rec.tokenize_examples(tokenizer, examples[:12], CUTOFF)
    peft_model = rec.apply_lora(model, settings)
    result = rec.train_lora(peft_model, train, [], settings, tmp_path / "work", progress=False)
    assert sum(float(p.detach().abs().sum()) for n, p in peft_model.named_parameters() if "lora_B" in n) > 0
    # The reference is the unmerged model evaluated in float64, so that the comparison measures the merge and
    # the fp32 checkpoint, not fp32 summation-order noise (~3e-5 on these ×10-scaled tiny weights).
    with torch.no_grad():
        expected = peft_model.double()(calib_ids).logits
    merged = rec.merge_lora(peft_model).float()
    plan.extra["recovery"] = rec.recovery_record(settings, result, {"source": "local"})
    ckpt = save_pruned(merged, plan, tmp_path / "ckpt", tokenizer)
    assert PruningPlan.load(ckpt).extra["recovery"]["steps"] == 3
    assert json.loads((ckpt / "config.json").read_text())["per_layer_config"]

    script = textwrap.dedent("""
        import sys
        sys.modules["nirvana"] = None  # our package is not importable: the checkpoint must stand alone
        import torch
        from transformers import AutoModelForCausalLM
        ckpt, ids_file, out_file = sys.argv[1:4]
        model = AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True, dtype=torch.float64).eval()
        assert not any("lora" in n for n, _ in model.named_parameters())
        with torch.no_grad():
            torch.save(model(torch.load(ids_file)).logits, out_file)
    """)
    torch.save(calib_ids, tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", script, str(ckpt), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
                   check=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert json.loads((ckpt / "config.json").read_text())["dtype"] == "float32"
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=1e-5)


class Interrupt(Exception):
    pass


def test_resume_continues_at_the_next_step_and_matches_an_uninterrupted_run(calib_ids, tokenizer, examples,
                                                                             tmp_path):
    # dropout on: resumption must restore the RNG too, or the continued losses would differ
    settings = rec.LoraSettings(**FAST | {"max_steps": 5, "micro_batch_size": 2, "grad_accum": 2,
                                          "eval_every": 2, "val_set_size": 2, "dropout": 0.05})
    train, val = examples[:12], examples[12:14]
    _, full, _ = rec.recover(pruned_tiny(calib_ids)[0], tokenizer, train, val, settings, tmp_path / "a",
                             progress=False, save_every=2)

    def stop_at_3(step, info):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        rec.recover(pruned_tiny(calib_ids)[0], tokenizer, train, val, settings, tmp_path / "b", progress=False,
                    callback=stop_at_3, save_every=2)
    assert [p.name for p in sorted((tmp_path / "b").glob("checkpoint-*"))] == ["checkpoint-2"]

    seen = []
    _, resumed, _ = rec.recover(pruned_tiny(calib_ids)[0], tokenizer, train, val, settings, tmp_path / "b",
                                progress=False, callback=lambda step, info: seen.append(step), save_every=2)
    assert resumed.resumed_from == 2 and seen == [3, 4, 5]  # done steps are skipped, none repeated
    assert [h[0] for h in resumed.history] == [1, 2, 3, 4, 5]
    torch.testing.assert_close(torch.tensor(resumed.history), torch.tensor(full.history), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.tensor(resumed.val_history), torch.tensor(full.val_history))

    other = rec.LoraSettings(**settings.to_dict() | {"lr": 5e-3})
    with pytest.raises(ValueError, match="other settings or data"):
        rec.recover(pruned_tiny(calib_ids)[0], tokenizer, train, val, other, tmp_path / "b", progress=False,
                    save_every=2)


def test_alpaca_data_through_datasets(monkeypatch, tokenizer):
    import datasets

    rows = [{"instruction": f"Say {i}.", "input": "" if i % 2 else f"context {i}", "output": f"{i} it is."}
            for i in range(30)]
    calls = []

    def fake_load_dataset(name, split=None, **kw):
        calls.append((name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = rec.load_examples("alpaca")
    assert calls == [("yahma/alpaca-cleaned", "train")]
    train, val = rec.split_train_val(data, 5, seed=42)
    reference = datasets.Dataset.from_list(rows).train_test_split(test_size=5, shuffle=True, seed=42)
    assert val == reference["test"].to_list() and len(train) == 25

    with_input = rec.tokenize_example(tokenizer, rows[0], cutoff=512)
    prompt = rec.alpaca_prompt(rows[0]["instruction"], rows[0]["input"])
    assert "### Input:\ncontext 0" in prompt and "### Input" not in rec.alpaca_prompt("x")
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert with_input["labels"][:n_prompt] == [rec.IGNORE] * n_prompt  # loss on the response only
    assert with_input["labels"][n_prompt:] == with_input["input_ids"][n_prompt:]
    assert with_input["input_ids"][-1] == tokenizer.eos_token_id
    both = rec.tokenize_example(tokenizer, rows[0], cutoff=512, train_on_inputs=True)
    assert both["labels"] == both["input_ids"]

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="lora_offline"):
        rec.load_examples("alpaca")


def test_local_stand_in_splits_passages_into_input_and_response(passages_file):
    ex = rec.local_examples([str(passages_file)], input_fraction=0.25, max_examples=3)
    assert len(ex) == 3 and all(e["instruction"] == rec.LOCAL_INSTRUCTION for e in ex)
    first = json.loads(passages_file.read_text().splitlines()[0])["text"].split()
    cut = int(len(first) * 0.25)
    assert ex[0]["input"].split() == first[:cut] and ex[0]["output"].split() == first[cut:]
    with pytest.raises(ValueError, match="source"):
        rec.load_examples("nope")


def test_entry_point_writes_before_after_rows_and_a_rerun_resumes(calib_ids, tokenizer, passages_file, tmp_path):
    from experiments.recover import run_recover

    model, plan = pruned_tiny(calib_ids)
    ckpt = save_pruned(model, plan, tmp_path / "pruned", tokenizer)
    rows_file = tmp_path / "rows.jsonl"
    overrides = [
        "model=tiny_llama", f"model.path={ckpt}", "recovery=lora_offline", f"recovery.data.files=[{passages_file}]",
        "recovery.max_steps=4", "job.save_every=2", "recovery.eval_every=2", "recovery.val_set_size=4",
        f"recovery.cutoff={CUTOFF}", "recovery.lr=1e-2", "recovery.warmup_steps=0", "eval=ppl",
        f"eval.perplexity.datasets=[{passages_file}]", "eval.perplexity.seq_len=[32]",
        "eval.perplexity.max_windows=4", f"job.results_file={rows_file}", f"job.work_dir={tmp_path / 'work'}",
        "job.progress=false",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = typed(compose(config_name="recover", overrides=overrides))
    rows = run_recover(cfg, tmp_path / "run")
    df = read_rows(rows_file)
    assert len(df) == len(rows)
    ppl = df[df["metric"] == "ppl/passages@32"]
    assert sorted(e["stage"] for e in ppl["extra"]) == ["after", "before"]
    assert set(ppl["pruner"]) == {"nirvana"} and set(ppl["sparsity"]) == {0.5}
    assert {"train_loss", "val_loss", "train_seconds"} <= set(df[df["task"] == "recovery"]["metric"])
    saved = PruningPlan.load(tmp_path / "work" / "checkpoint")
    assert saved.same_decision(plan) and saved.extra["recovery"]["data"]["source"] == "local"
    assert saved.extra["recovery"]["settings"]["r"] == 8 and saved.extra["recovery"]["steps"] == 4

    assert run_recover(cfg, tmp_path / "run") == []  # complete: skipped
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        again = typed(compose(config_name="recover", overrides=overrides + ["job.force=true"]))
    run_recover(again, tmp_path / "run2")  # the training state is complete: nothing is retrained
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["result"]["resumed_from"] == 4


@pytest.mark.slow
def test_lora_on_pruned_smollm2_fits_and_trains(smollm2_tokenizer, tmp_path):
    from nirvana.models import load_model

    model, _ = load_model("builtin:smollm2-135m-instruct", dtype="float32", device="cpu")
    prune(model, None, pruner="magnitude", sparsity=0.4, gamma=3.36)
    examples = rec.load_examples("local", files=["lambada_tail"], max_examples=6)
    settings = rec.LoraSettings(max_steps=2, micro_batch_size=1, grad_accum=1, cutoff=96, warmup_steps=0,
                                eval_every=None, val_set_size=2)
    merged, result, _ = rec.recover(model, smollm2_tokenizer, examples[:4], examples[4:], settings, tmp_path,
                                    progress=False)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(h[1])) for h in result.history)


def test_t5_recovery_trains_the_decoder_on_responses_merges_and_reloads(calib_ids, tokenizer, examples, tmp_path):
    from nirvana.surgery.checkpoint import load_pruned
    from nirvana.tiny import tiny_t5_model

    model = tiny_t5_model("flan_t5")
    _, plan = prune(model, calib_ids, sparsity=0.4, gamma=1.0)
    settings = rec.LoraSettings(**FAST | {"max_steps": 3, "lr": 2e-2})
    peft_model = rec.apply_lora(model, settings)
    wrapped = {n.split(".")[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}  # every projection of both stacks
    train, _ = rec.tokenize_examples(tokenizer, examples[:8], CUTOFF, seq2seq=True)
    assert all(ex["labels"] == tokenizer(e["output"], truncation=True, max_length=CUTOFF)["input_ids"]
               for ex, e in zip(train, examples[:8]))  # the decoder predicts the response, not the prompt
    result = rec.train_lora(peft_model, train, [], settings, tmp_path / "work", progress=False)
    assert result.steps == 3 and result.history[-1][1] < result.history[0][1]
    merged = rec.merge_lora(peft_model)
    ckpt = save_pruned(merged, plan, tmp_path / "ckpt", tokenizer)
    reloaded = load_pruned(ckpt).eval()
    ids = calib_ids[:2, :16]
    with torch.no_grad():
        a = merged(input_ids=ids, decoder_input_ids=ids[:, :8]).logits
        b = reloaded(input_ids=ids, decoder_input_ids=ids[:, :8]).logits
    torch.testing.assert_close(a, b)


def test_a_run_prunes_recovers_and_evaluates_with_rows_that_say_so(passages_file, tmp_path):
    from test_evidence import TINY, cfg

    from experiments.run import run_experiment

    recovery = ["recovery=lora_offline", f"recovery.data.files=[{passages_file}]", "recovery.max_steps=3",
                "recovery.val_set_size=4", f"recovery.cutoff={CUTOFF}", "recovery.lr=1e-2", "recovery.warmup_steps=0",
                "recovery.eval_every=null"]
    common = [*TINY, "pruner=nirvana", "sparsity=0.3", f"job.results_file={tmp_path / 'r.jsonl'}"]
    rows = run_experiment(cfg(*common, *recovery, "job.save_checkpoint=true"), tmp_path / "run")
    plain = run_experiment(cfg(*common), tmp_path / "plain")
    assert rows[0]["run_id"] != plain[0]["run_id"]  # recovery is part of what the numbers depend on
    assert {r["extra"]["recovery"] for r in rows} == {"lora_offline"}
    assert not any("recovery" in r["extra"] for r in plain)
    assert {"train_loss", "train_seconds", "val_loss"} <= {r["metric"] for r in rows if r["task"] == "recovery"}
    # the same plan before and after: recovery changes weights, never which units are kept
    def kept(rs):
        return {r["metric"]: r["value"] for r in rs if r["task"] == "pruning" and r["metric"] != "prune_seconds"}

    assert kept(rows) == kept(plain) and "params_after" in kept(rows)
    ppl = {r["run_id"]: r["value"] for r in rows + plain if r["metric"].startswith("ppl/")}
    assert len(set(ppl.values())) == 2 and all(math.isfinite(v) for v in ppl.values())  # it changed the model
    saved = PruningPlan.load(tmp_path / "run" / "checkpoint")
    assert saved.extra["recovery"]["steps"] == 3 and saved.extra["recovery"]["data"]["source"] == "local"


@pytest.mark.slow  # the overlap check reads the built LAMBADA head to know its items
def test_recovery_training_text_must_not_be_evaluated():
    from test_evidence import cfg

    from experiments.run import run_experiment

    bad = cfg("model=tiny_llama", "pruner=dense", "recovery=lora_offline", "recovery.data.files=[lambada_head]",
              "eval=ppl", "eval.perplexity.datasets=[lambada_head]")
    with pytest.raises(ValueError, match=r"recovery training: lambada_head .* overlaps"):
        run_experiment(bad, "/nonexistent")
