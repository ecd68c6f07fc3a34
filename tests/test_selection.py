"""KL-based calibration selection and the calibration sources."""

import pytest
import torch

from nirvana.calibration import (
    CalibrationConfig,
    Candidate,
    ProbeConfig,
    draw_windows,
    load_texts,
    lowest,
    plan_stability,
)
from nirvana.pipeline import choose_calibration
from nirvana.probe import KLMemo, KLProbe, Probe, build_probe, kl_to_dense, kls_to_dense
from nirvana.pruners import compute_plan
from nirvana.tiny import tiny_model

BATCH = ProbeConfig().batch_size


def keep_all(model, calib_ids):
    return compute_plan(model, calib_ids, "magnitude", sparsity=0.0, gamma=1.0)


def test_kl_is_zero_for_the_dense_plan_and_positive_otherwise(calib_ids):
    model = tiny_model("llama")
    probe = calib_ids[:, :16]
    assert kl_to_dense(model, keep_all(model, calib_ids), probe, BATCH) == pytest.approx(0.0, abs=1e-7)
    pruned = compute_plan(model, calib_ids, "nirvana", sparsity=0.5, gamma=1.0)
    assert kl_to_dense(model, pruned, probe, BATCH) > 1e-4


def test_kl_matches_the_physically_pruned_model(calib_ids):
    from nirvana.surgery.cut import apply_plan

    model = tiny_model("qwen3")
    plan = compute_plan(model, calib_ids, "nirvana", sparsity=0.5, gamma=1.0)
    probe = calib_ids[:4, :16]
    kl = kl_to_dense(model, plan, probe, BATCH)
    with torch.no_grad():
        dense = torch.log_softmax(model(probe).logits, -1)
        apply_plan(model, plan)
        pruned = torch.log_softmax(model(probe).logits, -1)
    assert kl == pytest.approx(float((dense.exp() * (dense - pruned)).sum(-1).mean()), rel=1e-4)


def test_the_lowest_kl_candidate_wins(calib_ids):
    model = tiny_model("llama")
    cands = [Candidate(f"c{i}", "x", i, calib_ids[i : i + 2]) for i in range(4)]
    # candidate 2 induces the dense plan (KL 0); the others prune more and more
    plans = [keep_all(model, calib_ids) if i == 2 else compute_plan(model, c.ids, "nirvana", sparsity=0.2 + 0.1 * i)
             for i, c in enumerate(cands)]
    for c, kl in zip(cands, kls_to_dense(model, plans, calib_ids[:, :16], BATCH)):
        c.kl = kl
    assert lowest(cands) == 2
    assert cands[2].kl == pytest.approx(0.0, abs=1e-7) and all(c.kl > 0 for i, c in enumerate(cands) if i != 2)


@pytest.mark.parametrize("selection", ["kl", "kl_per_sample"])
def test_choose_calibration_records_candidates_and_keeps_probe_disjoint(selection, tokenizer, monkeypatch):
    """Every candidate is drawn with the source's probe documents excluded, and all share one fixed probe."""
    import nirvana.calibration as cal

    model = tiny_model("llama")
    draws = []
    real_draw = cal.draw_windows

    def spy(texts, tok, n, t, seed, exclude=frozenset()):
        w = real_draw(texts, tok, n, t, seed, exclude)
        draws.append((set(w.texts), set(exclude)))
        return w

    monkeypatch.setattr(cal, "draw_windows", spy)
    c = CalibrationConfig(source="pydoc", n_samples=3, seq_len=24, seed=5, selection=selection, candidates=3,
                          probe=ProbeConfig(n_samples=6, seq_len=16, documents=10))
    probe = KLProbe.build(model, tokenizer, c)
    ids, record = choose_calibration(c, tokenizer, lambda x: compute_plan(model, x, "nirvana", sparsity=0.4, gamma=1.0),
                                     probe, probe, progress=False)
    assert ids.shape == (3, 24) and probe.windows.ids.shape == (6, 16)
    assert len(draws) == 3 and all(excluded == set(probe.windows.texts) for _, excluded in draws)
    assert all(not drawn & set(probe.windows.texts) for drawn, _ in draws)
    assert record["probe"] == probe.record and record["probe"]["span"] == "pydoc[-10:]"
    again = build_probe(CalibrationConfig(source="pydoc", probe=c.probe), tokenizer)
    assert torch.equal(again.ids, probe.windows.ids)  # fixed: the same probe whatever the selection or seed
    kls = [c["kl"] for c in record["candidates"]]
    assert all(k is not None and k >= 0 for k in kls)
    if selection == "kl":
        assert len(kls) == 3
        assert record["chosen"] == min(record["candidates"], key=lambda c: c["kl"])["label"]
        st = record["stability"]  # how alike the three draws' plans are
        assert st["draws"] == 3 and st["pairs"] == 3
        assert all(0.0 < st[k]["min"] <= st[k]["mean"] <= 1.0 for k in ("attention", "mlp"))
    else:
        chosen = set(record["chosen"])
        assert len(chosen) == 3
        worst_chosen = max(c["kl"] for c in record["candidates"] if c["label"] in chosen)
        assert all(c["kl"] >= worst_chosen for c in record["candidates"] if c["label"] not in chosen)


def test_a_bad_calibration_config_fails_when_built():
    with pytest.raises(ValueError, match="nothing to choose from"):
        CalibrationConfig(source="tensor", path="ids.pt", selection="kl")
    with pytest.raises(ValueError, match="unknown calibration selection"):
        CalibrationConfig(source="pydoc", selection="best")
    with pytest.raises(ValueError, match="unknown calibration source 'bookcorpa'"):
        CalibrationConfig(source="bookcorpa")
    with pytest.raises(ValueError, match="calibration.probe needs n_samples ≥ 1"):
        CalibrationConfig(source="pydoc", probe={"n_samples": 0})


def test_probe_exclusion_is_honoured(tokenizer):
    texts = [f"{w} " * 80 for w in "abcdefgh"]
    first = draw_windows(texts, tokenizer, 4, 8, seed=0)
    rest = draw_windows(texts, tokenizer, 4, 8, seed=0, exclude=set(first.texts))
    assert not set(first.texts) & set(rest.texts)
    with pytest.raises(ValueError, match="texts excluded"):
        draw_windows(texts, tokenizer, 5, 8, seed=0, exclude=set(first.texts))


def test_hub_sources_go_through_datasets(monkeypatch, tokenizer):
    """Hub code paths stay real: `datasets.load_dataset` is swapped for a local table with the same API."""
    import datasets

    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_dict({"text": [f"{w} " * 60 for w in "abcdefghij"] + ["too short"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    texts = load_texts("bookcorpus")
    assert calls[-1] == (("bookcorpus",), {"split": "train"})
    ids = draw_windows(texts, tokenizer, 4, 16, seed=12).ids
    assert ids.shape == (4, 16)
    load_texts("c4")
    assert calls[-1][0] == ("allenai/c4",) and "en/" in calls[-1][1]["data_files"]["train"]
    load_texts("hf", hf_name="some/dataset", hf_config="cfg", split="validation")
    assert calls[-1] == (("some/dataset", "cfg"), {"split": "validation"})


def test_hub_failure_names_offline_alternatives(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="offline, use calibration=lambada_tail"):
        load_texts("wikitext2")


def test_plan_stability_is_the_mean_and_min_pairwise_iou_of_kept_units(calib_ids):
    model = tiny_model("llama")
    a = compute_plan(model, calib_ids[:4], "nirvana", sparsity=0.4, gamma=1.0)
    b = compute_plan(model, calib_ids[4:8], "nirvana", sparsity=0.4, gamma=1.0)
    assert plan_stability([a]) is None
    same = plan_stability([a, a])
    assert same["attention"] == same["mlp"] == {"mean": 1.0, "min": 1.0} and same["pairs"] == 1
    three = plan_stability([a, a, b])
    iou = a.kept_iou(b)
    for kind in ("attention", "mlp"):
        assert three[kind]["mean"] == pytest.approx((1.0 + 2 * iou[kind]) / 3)
        assert three[kind]["min"] == pytest.approx(iou[kind])


@pytest.mark.parametrize("pruner", ["nirvana", "flap"])  # flap: compensation biases on the cut copy too
def test_cut_copies_give_the_masked_kls_and_leave_the_dense_model_alone(family, pruner, calib_ids):
    from nirvana.surgery.cut import cut_copy

    model = tiny_model(family)
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    plans = [compute_plan(model, calib_ids, pruner, sparsity=s, gamma=1.0) for s in (0.2, 0.5)]
    probe = calib_ids[:6, :16]
    cut = kls_to_dense(model, plans, probe, batch_size=4, forward="cut")
    masked = kls_to_dense(model, plans, probe, batch_size=4, forward="masked")
    assert cut == pytest.approx(masked, rel=1e-4) and cut[0] < cut[1]
    after = model.state_dict()
    assert all(after[k].data_ptr() == ptr and torch.equal(after[k], v) for k, (ptr, v) in before.items())
    copy = cut_copy(model, plans[1])  # shares what it does not cut: the embeddings, not the cut projections
    shared = {p.data_ptr() for p in model.parameters()}
    assert copy.get_input_embeddings().weight.data_ptr() in shared
    assert sum(p.numel() for p in copy.parameters() if p.data_ptr() not in shared) < plans[1].prunable_params


def test_plan_forward_cuts_only_when_every_copy_fits(calib_ids, monkeypatch):
    import nirvana.probe.kl as sel
    from nirvana.surgery.cut import cut_copy_bytes

    model = tiny_model("llama")
    plans = [compute_plan(model, calib_ids, "nirvana", sparsity=s, gamma=1.0) for s in (0.2, 0.5)]
    need = sum(cut_copy_bytes(model, p) for p in plans)
    monkeypatch.setattr(sel, "available_bytes", lambda device: int(need / sel.CUT_MEMORY_SHARE))
    assert sel.plan_forward(model, plans) == "cut"
    monkeypatch.setattr(sel, "available_bytes", lambda device: int(need / sel.CUT_MEMORY_SHARE) - 1)
    assert sel.plan_forward(model, plans) == "masked" and sel.plan_forward(model, plans[:1]) == "cut"
    monkeypatch.setattr(sel, "available_bytes", lambda device: None)  # the system does not say: no copies
    assert sel.plan_forward(model, plans) == "masked" and sel.plan_forward(model, plans, "cut") == "cut"
    with pytest.raises(ValueError, match="forward must be one of"):
        sel.plan_forward(model, plans, "copy")


def test_rating_shares_the_dense_probe_forward_and_gives_each_plan_its_own_kl(calib_ids):
    model = tiny_model("llama")
    plans = [compute_plan(model, calib_ids[2 * i : 2 * i + 2], "nirvana", sparsity=0.4, gamma=1.0) for i in range(3)]
    probe = KLProbe(model, Probe(calib_ids[:, :16], [], {}), batch_size=4, memo=KLMemo())  # 8 rows: 2 batches
    alone = [kl_to_dense(model, plan, probe.windows.ids, 4) for plan in plans]
    calls = []  # hooks travel into the cut copies: count the calls on the dense model itself
    model.register_forward_hook(lambda module, args, out: calls.append(module is model))
    assert probe.rate(plans) == alone
    assert sum(calls) == 2  # one dense forward per probe batch, not one per plan and batch
    assert probe.rate(plans[::-1]) == alone[::-1] and sum(calls) == 2  # met before: the memo answers
