"""The fast, shared KL fitness: the dense reference on disk (nirvana.probe.reference), the chunked per-token KL, ratings
on a prefix of the probe, and γ chosen coarse to fine (nirvana.allocation.gamma.rate_gammas)."""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nirvana.allocation.gamma import AUTO_GAMMAS, COARSE_GAMMAS, coarse_start, rate_gammas
from nirvana.calibration import CalibrationConfig, ProbeConfig
from nirvana.pipeline import PruneRecipe, prune
from nirvana.probe import KLProbe, kls_to_dense, token_kls
from nirvana.probe.reference import DenseReference
from nirvana.pruners import compute_plans
from nirvana.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]
CAL = CalibrationConfig(source="pydoc", n_samples=4, seq_len=32, seed=0,
                        probe=ProbeConfig(n_samples=8, seq_len=16, documents=10, batch_size=4))


def _forward_counter(model):
    count = []
    return count, model.register_forward_pre_hook(lambda *_: count.append(1))


def test_the_chunked_token_kl_is_the_whole_batch_one_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    dense = torch.log_softmax(torch.randn(3, 7, 4099, generator=g) * 3, dim=-1)
    logits = torch.randn(3, 7, 4099, generator=g) * 3
    whole = token_kls(dense, dense.exp(), logits, chunk=0)
    for chunk in (1, 4, 16, 64):
        assert torch.equal(token_kls(dense, dense.exp(), logits, chunk=chunk), whole)


def test_the_reference_gives_todays_kls_bit_for_bit_and_spares_every_dense_forward(tokenizer, calib_ids, tmp_path):
    model = tiny_model("llama")
    plans = compute_plans(model, calib_ids, "nirvana", 0.4, [1.0, 2.0, 3.36])
    probe = KLProbe.build(model, tokenizer, CAL, tmp_path)
    today = kls_to_dense(model, plans, probe.windows.ids, 4)  # no reference, no memo: the dense pass every call
    count, handle = _forward_counter(model)
    first = probe.rate(plans)  # builds the reference: one dense forward per batch, then the plans'
    assert first == today and len(count) == 2 * (1 + 3)
    assert len(list(probe.reference.folder.glob("batch_*.safetensors"))) == 2
    # another run (a fresh memo): the reference is read from disk, the plans' forwards only
    for memo in tmp_path.glob("kl_*.jsonl"):
        memo.unlink()
    again = KLProbe.build(model, tokenizer, CAL, tmp_path)
    count.clear()
    assert again.rate(plans) == today and len(count) == 2 * 3 and again.reference.computed == 0
    assert again.counts.plan_batches == 2 * 3 and again.counts.rated == 3
    count.clear()
    assert again.rate(plans) == today and not count  # the memo: nothing at all
    handle.remove()


def test_a_rating_on_the_first_windows_is_the_rating_of_that_prefix(tokenizer, calib_ids, tmp_path):
    model = tiny_model("llama")
    plans = compute_plans(model, calib_ids, "nirvana", 0.4, [1.0, 3.36])
    probe = KLProbe.build(model, tokenizer, CAL, tmp_path)
    ids = probe.windows.ids
    assert probe.rate(plans, windows=4) == kls_to_dense(model, plans, ids[:4], 4)
    assert probe.rate(plans, windows=3) == probe.rate(plans, windows=4)  # whole batches: 3 windows → the first 4
    assert probe.rate(plans, windows=100) == probe.rate(plans) == kls_to_dense(model, plans, ids, 4)
    with pytest.raises(ValueError, match="at least one probe window"):
        probe.rate(plans, windows=0)


def test_a_float16_reference_is_opt_in_separate_and_close(tokenizer, calib_ids, tmp_path):
    """float16 log-probabilities (half the disk): another folder, another memo key, KLs within 1e-3 relative."""
    model = tiny_model("llama")
    plans = compute_plans(model, calib_ids, "nirvana", 0.4, [1.0, 3.36])
    exact = KLProbe.build(model, tokenizer, CAL, tmp_path)
    half = KLProbe.build(model, tokenizer, dataclasses.replace(CAL, probe=dataclasses.replace(CAL.probe,
                                                                                           reference="float16")), tmp_path)
    assert half.reference.folder != exact.reference.folder
    a, b = exact.rate(plans), half.rate(plans)
    assert a != b and all(abs(x - y) <= 1e-3 * x for x, y in zip(a, b, strict=True))
    assert half.record["reference"] == "float16" and "reference" not in exact.record
    assert exact.rate(plans) == a  # the memo keeps the two apart
    with pytest.raises(ValueError, match="reference"):
        ProbeConfig(reference="int8")
    with pytest.raises(ValueError, match="precision"):
        DenseReference(model, None, "bfloat16")


# --- γ coarse to fine ---------------------------------------------------------------------------------------
def _descend(kls: dict[float, float], eligible=None) -> tuple[float, int]:
    gammas = list(kls)
    eligible = list(range(len(gammas))) if eligible is None else eligible
    rated = []

    def rate(idx):
        rated.extend(idx)
        return [kls[gammas[i]] for i in idx]

    out = rate_gammas(gammas, eligible, rate, "coarse")
    best = min((i for i in eligible if out[i] is not None), key=out.__getitem__)
    assert sorted(rated) == [i for i, kl in enumerate(out) if kl is not None]  # each rated once
    return gammas[best], len(rated)


def test_coarse_to_fine_descends_from_a_coarse_start():
    assert coarse_start(list(AUTO_GAMMAS)) == list(COARSE_GAMMAS)
    assert coarse_start([4.0, 5.0, 6.0, 8.0]) == [5.0, 8.0]  # the COARSE_GAMMAS in a list, and its largest
    assert coarse_start([4.0, 6.0, 7.0, 8.0]) == [4.0, 6.0, 8.0]  # none: every other from the top, and the smallest
    unimodal = dict(zip(AUTO_GAMMAS, [9, 7, 5, 3, 2, 2.5, 4, 6, 8], strict=True))
    assert _descend(unimodal) == (2.5, 7)  # 1, 2, 3.36, 5; then 1.5 and 2.5 around 2; then 3 around 2.5
    rated = []
    grid = rate_gammas(list(unimodal), [0, 1], lambda idx: rated.extend(idx) or [1.0] * len(idx), "grid")
    assert grid == [1.0] * 9 and rated == list(range(9))  # the grid rates everything, eligible or not


def test_coarse_to_fine_picks_the_committed_gamma_of_every_published_auto_run():
    """Every committed `gamma=auto` run records its chosen draw's KL at all 9 γ (kl/gamma_candidate rows). The descent
    from COARSE_GAMMAS ends on the grid's choice for each of them; every other draw can only do worse coarse to fine
    (a subset of its grid is rated), so each run's (draw, γ) is the same. With a slack (auto_matched) γ that lost
    although their KL was lower are ineligible, and so never rated."""
    landscapes = []
    for path in sorted((ROOT / "results" / "rows").glob("beyond_*.jsonl")):
        runs = collections.defaultdict(list)
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r["metric"] == "kl/gamma_candidate":
                runs[r["run_id"]].append(r)
        landscapes += runs.values()
    assert len(landscapes) >= 13
    saved = 0
    for rows in landscapes:
        kls = {r["extra"]["gamma"]: r["value"] for r in sorted(rows, key=lambda r: r["extra"]["gamma"])}
        chosen = next(r["extra"]["gamma"] for r in rows if r["extra"]["chosen"])
        eligible = [i for i, g in enumerate(kls) if not kls[g] < kls[chosen]]
        gamma, n = _descend(kls, eligible)
        assert gamma == chosen, (rows[0]["pruner"], rows[0]["sparsity"], kls)
        saved += len(kls) - n
    assert saved >= 2 * len(landscapes)


def test_a_coarse_gamma_search_in_a_run_records_what_it_rated(tokenizer):
    model = tiny_model("llama")
    grid = PruneRecipe("nirvana", 0.3, options={"gamma": "auto"}, calibration=CAL)
    coarse = PruneRecipe("nirvana", 0.3, options={"gamma": "auto", "gamma_search": "coarse"}, calibration=CAL)
    full = prune(model, tokenizer, grid, apply=False).plan.extra["gamma_choice"]
    fast = prune(model, tokenizer, coarse, apply=False).plan.extra["gamma_choice"]
    kls = {c["gamma"]: c["kl"] for c in full["candidates"]}
    assert "search" not in full and fast["search"] == "coarse"
    assert {c["gamma"] for c in fast["candidates"]} | {u["gamma"] for u in fast["unrated"]} == set(kls)
    assert all(kls[c["gamma"]] == c["kl"] for c in fast["candidates"])  # the same numbers, fewer of them
    values = [kls[g] for g in sorted(kls)]
    best = values.index(min(values))
    if all(a > b for a, b in zip(values[:best], values[1 : best + 1])) and \
            all(a < b for a, b in zip(values[best:], values[best + 1 :])):  # unimodal: the descent cannot miss
        assert fast["chosen"] == full["chosen"]
    with pytest.raises(ValueError, match="gamma_search"):
        prune(model, tokenizer, PruneRecipe("nirvana", 0.3, options={"gamma": "auto", "gamma_search": "random"},
                                            calibration=CAL), apply=False)
