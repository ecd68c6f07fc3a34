"""The shared-prefix lm-eval model class gives lm-eval's `hf` answers: the same per-request log-likelihoods (to
float summation order) and greedy flags, on dense and pruned models of every decoder family; T5 falls back."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.models.huggingface import HFLM

from nirvana import paths
from nirvana.evaluation.shared_prefix import SharedPrefixLM, attention_mask, pack
from nirvana.pruners import prune
from nirvana.tiny import TINY_FAMILIES, pydoc_text, tiny_model, tiny_t5_model

ROOT = Path(__file__).resolve().parents[1]


def requests(tok, n_docs: int = 6):
    """Multiple choice (shared contexts), WinoGrande-like (shared sentence starts), one-token continuations,
    single requests, and one longer than max_length (left-truncated as lm-eval does)."""
    words = pydoc_text().split()
    text = lambda i, n: " ".join(words[i : i + n])  # noqa: E731
    pairs = []
    for d in range(n_docs):
        ctx = f"Question: {text(40 * d, 12)}\nAnswer:"
        pairs += [(ctx, " " + text(900 + 7 * (d * 4 + k), 3 + k)) for k in range(4)]  # 4 choices
        start = text(2000 + 30 * d, 10)
        pairs += [(f"{start} {opt}", " " + text(3000 + 9 * d, 5)) for opt in ("the parser", "a module")]
        pairs += [(text(4000 + 50 * d, 30) + "?", c) for c in (" yes", " no")]  # one-token continuations
        pairs.append((text(5000 + 20 * d, 15), " " + text(5100 + 5 * d, 4)))
    pairs.append((text(0, 400), " " + text(500, 6)))  # longer than max_length=256: truncated from the left
    return pairs


def encode(lm, pairs):
    return [((c, x), *lm._encode_pair(c, x)) for c, x in pairs]


def both(model, tok, **kw):
    common = dict(pretrained=model, tokenizer=tok, batch_size=3, max_length=256, **kw)
    return HFLM(**common), SharedPrefixLM(**common)


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("pruned", [False, True])
def test_same_loglikelihoods_as_lm_evals_hf(family, pruned, tokenizer, calib_ids):
    torch.set_num_threads(1)
    model = tiny_model(family)
    if pruned:
        prune(model, calib_ids, sparsity=0.5, gamma=1.0)
    stock, ours = both(model, tokenizer)
    reqs = encode(stock, requests(tokenizer))
    a = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    b = ours._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert len(a) == len(b) == len(reqs)
    for (la, ga), (lb, gb), (strings, _, _) in zip(a, b, reqs):
        assert lb == pytest.approx(la, abs=1e-4), strings
        assert ga == gb, strings


def test_packing_shares_prefixes_and_keeps_each_requests_view():
    seqs = [[1, 2, 3, 4, 5], [1, 2, 3, 7], [1, 2, 3, 4, 9, 9], [8, 8, 8]]
    rows = pack(seqs, contexts=[3, 3, 3, 2], max_row=64)
    assert len(rows) == 2
    shared = next(r for r in rows if len(r.members) == 3)
    assert shared.prefix == [1, 2, 3] and len(shared) == 3 + 2 + 1 + 3  # the prefix once, then each tail
    tokens, segments, positions, _ = shared.layout()
    for i in shared.members:  # every request's tokens sit at the positions they would have on their own
        assert [tokens[shared.index(i, p)] for p in range(len(seqs[i]))] == seqs[i]
        assert [positions[shared.index(i, p)] for p in range(len(seqs[i]))] == list(range(len(seqs[i])))
    mask = attention_mask(torch.tensor([segments + [-1]]), torch.float32)[0, 0] == 0
    assert tokens == [1, 2, 3, 4, 5, 4, 9, 9, 7] and segments == [0, 0, 0, 1, 1, 2, 2, 2, 3]
    assert mask[5, :6].tolist() == [True, True, True, False, False, True]  # 2nd tail: the prefix, not the 1st tail
    assert mask[-1].tolist() == [False] * 9 + [True]  # padding attends to itself only
    assert len(pack(seqs, [3, 3, 3, 2], max_row=7)) == 3  # the row limit splits what would be shared


def test_requests_it_cannot_serve_fail_clearly(tokenizer):
    stock, ours = both(tiny_model("llama"), tokenizer)
    with pytest.raises(ValueError, match="empty continuation"):
        ours._loglikelihood_tokens([(("ctx", ""), [1, 2], [])], disable_tqdm=True)
    with pytest.raises(ValueError, match="continuation of 300 tokens"):
        ours._loglikelihood_tokens([(("ctx", "x"), [1], [5] * 300)], disable_tqdm=True)


def test_encoder_decoders_fall_back_to_lm_evals_own_scoring(tokenizer):
    model = tiny_t5_model("t5")
    stock, ours = both(model, tokenizer, backend="seq2seq")
    reqs = [((c, x), *stock._encode_pair(c, x)) for c, x in requests(tokenizer, 2)[:8]]
    assert ours._loglikelihood_tokens(reqs, disable_tqdm=True) == stock._loglikelihood_tokens(reqs, disable_tqdm=True)


@pytest.mark.slow
def test_a_pruned_smollm2_agrees_with_hf_on_every_local_task(smollm2, smollm2_tokenizer, smollm2_calibration):
    """Three items of each of the nine tasks on a pruned SmolLM2 (uneven widths across layers: the case the packing
    must not get wrong). The dense model is compared on two tasks by test_bench's zero-shot bench test and on all
    nine by `make bench`'s zero-shot section; running it here too doubled this test's time."""
    import copy

    import lm_eval

    from nirvana.evaluation import zeroshot as Z

    pruned = copy.deepcopy(smollm2)
    # 4 of the 32 calibration rows: the check needs a pruned shape, not a good one, and the full batch costs a
    # whole scoring pass (tens of seconds on 2 cores)
    prune(pruned, smollm2_calibration[:4], sparsity=0.3, gamma=3.36)
    names = {t: Z.lm_eval_task_name(t, "local") for t in Z.TASK_METRICS}
    out = {}
    for lm in Z.LMS:
        wrapped, _ = Z.wrap_model(pruned, smollm2_tokenizer, 8, 2048, lm)
        out[lm] = lm_eval.simple_evaluate(model=wrapped, tasks=list(names.values()), limit=3, log_samples=True,
                                          task_manager=Z.task_manager("local"), bootstrap_iters=0)
    for task, name in names.items():
        ours = {s["doc_id"]: s for s in out["hf-shared-prefix"]["samples"][name]}
        assert len(ours) == 3, task
        for a in out["hf"]["samples"][name]:
            b = ours[a["doc_id"]]
            la, lb = Z.sample_loglikelihoods(a), Z.sample_loglikelihoods(b)
            worst = max(abs(x - y) for x, y in zip(la, lb))
            assert worst < 1e-4, f"{task} item {a['doc_id']}: log-likelihoods differ by {worst:.2e}"
            metric = Z.TASK_METRICS[task]
            assert a[metric] == b[metric], f"{task} item {a['doc_id']}: {metric} flips (a near tie: {la} vs {lb})"


@pytest.mark.slow
@pytest.mark.slow  # reads the built benchmark data (make assets)
def test_stock_cli_with_our_model_class_matches_hf_to_the_item(tmp_path, tokenizer, calib_ids):
    """`nirvana-lm-eval --model hf-shared-prefix` (the stock CLI, our class registered) on a pruned checkpoint
    gives `lm_eval --model hf`'s answers, item for item."""
    from nirvana.evaluation import zeroshot as Z
    from nirvana.surgery.checkpoint import save_pruned

    model = tiny_model("llama")
    _, plan = prune(model, calib_ids, sparsity=0.4, gamma=1.0)
    ckpt = save_pruned(model, plan, tmp_path / "ckpt", tokenizer)
    samples = {}
    for exe, lm in (("lm_eval", "hf"), ("nirvana-lm-eval", "hf-shared-prefix")):
        out = tmp_path / lm
        cmd = [str(Path(sys.executable).with_name(exe)), "--model", lm, "--model_args",
               f"pretrained={ckpt},trust_remote_code=True,max_length=256", "--tasks", "local_arc_easy",
               "--include_path", str(paths.tasks_dir()), "--limit", "8", "--batch_size", "4", "--device", "cpu",
               "--output_path", str(out), "--log_samples"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = next(out.rglob("samples_local_arc_easy*.jsonl")).read_text().splitlines()
        samples[lm] = {s["doc_id"]: s for s in map(json.loads, lines)}
    for d, a in samples["hf"].items():
        b = samples["hf-shared-prefix"][d]
        assert a["acc"] == b["acc"] and a["acc_norm"] == b["acc_norm"]
        for x, y in zip(Z.sample_loglikelihoods(a), Z.sample_loglikelihoods(b)):
            assert abs(x - y) < 1e-4


def test_the_float64_arbiter_scores_pairs_as_lm_evals_hf_does(tmp_path, tokenizer):
    """The exactness benchmark's referee: the same tokens as `hf`, so its float64 sums differ from `hf`'s fp32
    ones by rounding only."""
    from nirvana.bench.zeroshot import reference_loglikelihoods

    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    pairs = requests(tokenizer, 2)
    stock = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=256)
    want = [ll for ll, _ in stock._loglikelihood_tokens(encode(stock, pairs), disable_tqdm=True)]
    got = reference_loglikelihoods(str(tmp_path), [list(p) for p in pairs], 256)["references"]
    assert [g["continuation_tokens"] for g in got] == [len(stock._encode_pair(c, x)[1]) for c, x in pairs]
    assert max(abs(g["loglikelihood"] - w) for g, w in zip(got, want)) < 1e-4
    assert got[0]["loglikelihood"] != want[0]  # computed anew in float64, not copied from an fp32 pass
