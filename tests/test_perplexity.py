"""Perplexity: the official protocol, checked against closed forms and a naive re-implementation."""

import math

import pytest
import torch

from nirvana import paths
from nirvana.evaluation import perplexity as P
from nirvana.tiny import TINY_VOCAB, pydoc_text, tiny_model

TEXTS = [pydoc_text()[i : i + 3000] for i in range(0, 30000, 3000)]


def test_uniform_logits_give_the_vocabulary_size(tokenizer):
    model = tiny_model("llama")  # untied head: zeroing it makes every logit 0
    with torch.no_grad():
        model.lm_head.weight.zero_()
    r = P.evaluate_perplexity(model, tokenizer, "uniform", seq_len=32, texts=TEXTS, max_windows=6, progress=False)
    assert r.ppl == pytest.approx(TINY_VOCAB, rel=1e-5)
    assert r.nll == pytest.approx(math.log(TINY_VOCAB), rel=1e-6)


def test_windows_are_non_overlapping_and_drop_the_remainder(tokenizer):
    ids = P.encode(TEXTS, tokenizer)
    assert torch.equal(ids, torch.tensor(tokenizer("\n\n".join(TEXTS), add_special_tokens=False)["input_ids"]))
    w = P.cut_windows(ids, 100)
    assert w.shape == (ids.numel() // 100, 100)
    assert torch.equal(w.flatten(), ids[: w.numel()])
    assert P.cut_windows(ids, 100, max_windows=3).shape == (3, 100)
    assert P.cut_windows(ids, 100, max_tokens=450).shape == (4, 100)  # whole windows only
    with pytest.raises(ValueError, match="seq_len must be ≥ 2"):
        P.cut_windows(ids, 1)
    with pytest.raises(ValueError, match="not one window"):
        P.cut_windows(ids[:50], 100)


def test_matches_a_naive_per_window_loss_and_records_the_protocol(tokenizer):
    model = tiny_model("qwen2")
    r = P.evaluate_perplexity(model, tokenizer, "pydoc", seq_len=48, batch_size=3, texts=TEXTS, max_windows=7,
                              progress=False)
    windows = P.cut_windows(P.encode(TEXTS, tokenizer), 48, max_windows=7)
    with torch.no_grad():  # the official code's form: mean of per-window HF losses (equal-length windows)
        losses = [model(w[None], labels=w[None]).loss for w in windows]
    assert r.ppl == pytest.approx(math.exp(torch.stack(losses).mean().item()), rel=1e-5)
    assert (r.n_windows, r.n_tokens) == (7, 7 * 47)
    assert r.metric == "ppl/pydoc@48" and r.seq_len == 48
    assert r.limit == "max_windows=7"
    full = P.evaluate_perplexity(model, tokenizer, "pydoc", seq_len=48, texts=TEXTS[:2], progress=False)
    assert full.limit is None


def test_hub_datasets_load_the_official_splits(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(repo, config, split):
        calls.append((repo, config, split))
        return {"text": ["a", "", "b"], "sentence": ["s1", "s2"]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert P.load_texts("wikitext2") == ["a", "", "b"]  # empty lines kept: the raw split, joined as is
    assert P.load_texts("ptb") == ["s1", "s2"]
    assert P.load_texts("lambada", max_texts=1) == ["a"]
    assert calls == [("wikitext", "wikitext-103-v1", "test"), ("ptb_text_only", "penn_treebank", "validation"),
                     ("EleutherAI/lambada_openai", "default", "test")]


def test_hub_failure_names_the_offline_alternatives(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="wiki_passages"):
        P.load_texts("wikitext2")


def test_local_files_and_unknown_names(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    (tmp_path / "b.txt").write_text("plain text")
    assert P.load_texts(str(tmp_path / "a.jsonl")) == ["one", "two"]
    assert P.load_texts(str(tmp_path / "b.txt")) == ["plain text"]
    assert P.dataset_label(str(tmp_path / "a.jsonl")) == "a"
    with pytest.raises(ValueError, match="unknown perplexity dataset 'nope'"):
        P.load_texts("nope")


@pytest.mark.slow
def test_smollm2_lambada_head_regression(smollm2, smollm2_tokenizer):
    """Pinned on the real tokenizer (no BOS, "\n\n" joins). The 300-text sanity check of this protocol (ppl 54.5 at
    128 tokens) takes minutes on 2 CPU cores, so it is a documented command; this is its first 60 texts,
    measured with this code after that check passed (ppl 54.50)."""
    if not (paths.text_dir() / "lambada_head.jsonl").is_file():
        pytest.skip("offline text sets not built: run `make assets`")
    texts = P.load_texts("lambada_head", max_texts=60)
    assert P.encode(texts, smollm2_tokenizer)[0].item() != smollm2_tokenizer.bos_token_id
    r = P.evaluate_perplexity(smollm2, smollm2_tokenizer, "lambada_head", seq_len=128, batch_size=8,
                              texts=texts, progress=False)
    assert (r.n_windows, r.n_tokens) == (37, 37 * 127)
    assert r.ppl == pytest.approx(52.995, abs=0.01)
