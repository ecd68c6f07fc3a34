"""`gamma=auto` (or a list): γ chosen by the plan's KL to the dense model on the fixed probe, from one scoring pass
per calibration candidate (nirvana.pipeline)."""

from __future__ import annotations

import dataclasses

import pytest
from test_evidence import TINY, cfg

from experiments.run import run_experiment
from nirvana.allocation import AUTO_GAMMAS, gamma_candidates, grid_edge
from nirvana.calibration import CalibrationConfig, ProbeConfig
from nirvana.evaluation.protocol import run_identity
from nirvana.pipeline import PruneRecipe, check_recipe, prune
from nirvana.probe import KLMemo, build_probe, kl_to_dense, kls_to_dense
from nirvana.pruners import compute_plan, compute_plans
from nirvana.scoring.scorers import NirvanaScorer
from nirvana.tiny import tiny_model

CAL = CalibrationConfig(source="pydoc", n_samples=4, seq_len=32, seed=0,
                        probe=ProbeConfig(n_samples=4, seq_len=16, documents=10, batch_size=4))


def test_gamma_candidates_spellings():
    assert gamma_candidates(3.36) == [3.36] and gamma_candidates("auto") == list(AUTO_GAMMAS)
    assert gamma_candidates([1, 2.5]) == [1.0, 2.5]
    for bad in ([], [1.0, -1.0], "often", [True], float("inf")):
        with pytest.raises(ValueError, match="gamma"):
            gamma_candidates(bad)


def test_one_scoring_pass_gives_each_gammas_plan(calib_ids, monkeypatch):
    model = tiny_model("llama")
    calls = []
    original = NirvanaScorer.score
    monkeypatch.setattr(NirvanaScorer, "score", lambda self, *a: calls.append(1) or original(self, *a))
    plans = compute_plans(model, calib_ids, "nirvana", 0.3, [1.0, 3.36])
    assert len(calls) == 1
    for gamma, plan in zip([1.0, 3.36], plans, strict=True):
        alone = compute_plan(model, calib_ids, "nirvana", sparsity=0.3, gamma=gamma)
        assert plan.same_decision(alone) and plan.gamma == gamma
    with pytest.raises(ValueError, match="takes one γ"):
        compute_plans(model, calib_ids, "flap", 0.3, [1.0, 2.0])


def test_auto_picks_the_lowest_kl_and_records_every_candidate(tokenizer):
    model = tiny_model("llama")
    recipe = PruneRecipe("nirvana", 0.3, options={"gamma": [0.5, 1.0, 3.36]}, calibration=CAL, measure_kl=True)
    outcome = prune(model, tokenizer, recipe, apply=False)
    choice = outcome.plan.extra["gamma_choice"]
    kls = {c["gamma"]: c["kl"] for c in choice["candidates"]}
    assert set(kls) == {0.5, 1.0, 3.36} and choice["chosen"] == min(kls, key=kls.get) == outcome.plan.gamma
    assert outcome.kl_probe == pytest.approx(kls[choice["chosen"]], rel=1e-12)  # the run's KL is the winner's
    probe = build_probe(CAL, tokenizer)
    # Each candidate's KL is that γ's plan's KL on the fixed probe, computed independently here.
    ids = outcome.calibration_ids
    plan_1 = compute_plan(model, ids, "nirvana", sparsity=0.3, gamma=1.0)
    assert kl_to_dense(model, plan_1, probe.ids, 4) == pytest.approx(kls[1.0], rel=1e-9)
    assert recipe.row_columns(outcome)["gamma"] == choice["chosen"]


@pytest.mark.parametrize("kls,edge", [([3.0, 2.0, 1.0], "largest"), ([1.0, 2.0, 3.0], "smallest"),
                                      ([2.0, 1.0, 3.0], None)])
def test_a_choice_at_an_end_of_the_list_is_flagged(tokenizer, monkeypatch, caplog, kls, edge):
    from nirvana.probe import KLProbe

    monkeypatch.setattr(KLProbe, "rate", lambda self, plans: list(kls))
    recipe = PruneRecipe("nirvana", 0.3, options={"gamma": [0.5, 1.0, 3.36]}, calibration=CAL)
    with caplog.at_level("WARNING", logger="nirvana.allocation.gamma"):
        choice = prune(tiny_model("llama"), tokenizer, recipe, apply=False).plan.extra["gamma_choice"]
    assert choice["edge"] == edge and ("may fall further" in caplog.text) == (edge is not None)
    assert grid_edge([1.0, 2.0], 2.0) is None  # a two-value list is the user's own comparison, not a search


def test_infeasible_gammas_are_skipped_and_recorded(tokenizer):
    model = tiny_model("llama")  # largest feasible sparsity: 0.94 at γ=1.2, 0.73 at γ=5, 0.67 at γ=0.5
    recipe = PruneRecipe("nirvana", 0.75, options={"gamma": [1.0, 5.0]}, calibration=CAL)
    plan = prune(model, tokenizer, recipe, apply=False).plan
    assert plan.gamma == 1.0 and plan.extra.get("gamma_choice") is None  # one feasible γ left: nothing to choose
    recipe = PruneRecipe("nirvana", 0.75, options={"gamma": [0.5, 1.0, 1.2, 5.0]}, calibration=CAL)
    choice = prune(model, tokenizer, recipe, apply=False).plan.extra["gamma_choice"]
    assert choice["infeasible"] == [0.5, 5.0] and {c["gamma"] for c in choice["candidates"]} == {1.0, 1.2}


def test_bad_auto_requests_fail_before_any_model_is_loaded():
    from nirvana.tiny import tiny_config

    with pytest.raises(ValueError, match="takes one γ"):
        check_recipe(PruneRecipe("wanda_sp", 0.2, options={"gamma": "auto"}, calibration=CAL))
    with pytest.raises(ValueError, match="calibration.source=tensor"):
        check_recipe(PruneRecipe("nirvana", 0.2, options={"gamma": "auto"},
                                 calibration=CalibrationConfig(source="tensor", path="ids.pt")))
    with pytest.raises(ValueError, match="no γ among"):
        check_recipe(PruneRecipe("nirvana", 0.8, options={"gamma": [0.5, 5.0]}, calibration=CAL),
                     tiny_config("llama"))


def test_auto_in_a_run_records_the_chosen_gamma_and_hashes_the_grid(tmp_path):
    config = cfg(*TINY, "pruner=nirvana", "gamma=[1.0,3.36]", "sparsity=0.3", f"job.results_file={tmp_path / 'r.jsonl'}")
    rows = run_experiment(config, tmp_path / "run")
    assert len({r["gamma"] for r in rows}) == 1 and {r["gamma"] for r in rows} <= {1.0, 3.36}
    candidates = [r for r in rows if r["metric"] == "kl/gamma_candidate"]
    assert sorted(r["extra"]["gamma"] for r in candidates) == [1.0, 3.36]
    (chosen,) = [r for r in candidates if r["extra"]["chosen"]]
    probe = next(r for r in rows if r["metric"] == "kl/probe")
    assert chosen["extra"]["gamma"] == rows[0]["gamma"] and chosen["value"] == pytest.approx(probe["value"], rel=1e-12)
    auto = cfg(*TINY, "gamma=auto")

    _, identity = run_identity(auto)
    assert identity["pruner"]["gamma"] == list(AUTO_GAMMAS)


def test_kls_of_many_plans_share_the_dense_pass_and_match_each_alone(calib_ids):
    model = tiny_model("llama")
    plans = compute_plans(model, calib_ids, "nirvana", 0.4, [1.0, 2.0, 3.36])
    forwards = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    together = kls_to_dense(model, plans, calib_ids[:6, :16], batch_size=4)
    shared = len(forwards)
    alone = [kl_to_dense(model, p, calib_ids[:6, :16], batch_size=4) for p in plans]
    handle.remove()
    assert together == alone  # bit for bit
    assert len(set(together)) == 3 and min(together) > 0
    assert shared == 2 * (3 + 1)  # two probe batches × (one dense + three masked forwards)


def test_a_plan_rated_once_is_not_rated_again(calib_ids, tokenizer):
    """KLMemo: the same plan on the same probe costs no forward the second time, with the same number; a plan
    with other kept units or another probe is measured. In a joint (calibration × γ) selection the memo saves the
    draws' re-ratings and the final plan's: probe forwards = draws × (G + 1) per batch, nothing more."""
    model = tiny_model("llama")
    plans = compute_plans(model, calib_ids, "nirvana", 0.4, [1.0, 3.36])
    probe = calib_ids[:6, :16]
    forwards = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    memo = KLMemo()
    first = kls_to_dense(model, plans, probe, 4, memo)
    n_first = len(forwards)
    again = kls_to_dense(model, plans[::-1], probe, 4, memo)
    assert again == first[::-1] and len(forwards) == n_first  # no forward at all
    other_probe = kls_to_dense(model, plans[:1], calib_ids[:6, 16:32], 4, memo)
    assert len(forwards) > n_first and other_probe[0] != first[0]
    handle.remove()
    assert first == kls_to_dense(model, plans, probe, 4)  # the memo changes no number

    cal = dataclasses.replace(CAL, selection="kl", candidates=2)
    recipe = PruneRecipe("nirvana", 0.3, options={"gamma": [1.0, 3.36]}, calibration=cal, measure_kl=True)

    def run(memo_on: bool):
        import nirvana.probe as probe

        fresh, count = tiny_model("llama"), []
        handle = fresh.register_forward_pre_hook(lambda *_: count.append(1))
        with pytest.MonkeyPatch.context() as mp:
            if not memo_on:
                mp.setattr(probe, "KLMemo", lambda path=None: None)
            outcome = prune(fresh, tokenizer, recipe, apply=False)
        handle.remove()
        return outcome, len(count)

    with_memo, n_with = run(True)
    without, n_without = run(False)
    assert with_memo.kl_probe == without.kl_probe and with_memo.plan.same_decision(without.plan)
    assert with_memo.plan.extra["gamma_choice"] == without.plan.extra["gamma_choice"]
    # with the memo, full-model forwards on the probe (scoring runs the inner model, not counted here) are each
    # draw's γ ratings, dense + 2 plans per batch, and nothing else; saved per batch: the draws' re-rating of their
    # best plans (one call: dense + a plan per draw), the final plan_for's γ ratings (dense + 2 plans) and the final
    # KL (dense + plan)
    probe_batches = -(-CAL.probe.n_samples // CAL.probe.batch_size)
    assert n_with == 2 * (1 + 2) * probe_batches
    assert n_without - n_with == ((1 + 2) + 3 + 2) * probe_batches


def test_a_sparsity_slack_keeps_gammas_that_remove_less_from_winning(tokenizer, calib_ids):
    from types import SimpleNamespace

    from nirvana.allocation.gamma import eligible_gammas

    plans = [SimpleNamespace(achieved_sparsity=a) for a in (0.38, 0.395, 0.40)]
    assert eligible_gammas(plans, 0.4, None) == [0, 1, 2]
    assert eligible_gammas(plans, 0.4, 0.01) == [1, 2] and eligible_gammas(plans, 0.4, 0.0) == [2]
    assert eligible_gammas(plans[:2], 0.4, 0.0) == [1]  # none within: the one that removes the most
    model = tiny_model("llama")
    free = PruneRecipe("nirvana", 0.3, options={"gamma": [0.5, 1.0, 3.36]}, calibration=CAL)
    held = PruneRecipe("nirvana", 0.3, options={"gamma": [0.5, 1.0, 3.36], "gamma_sparsity_slack": 0.0},
                       calibration=CAL)
    choice = prune(model, tokenizer, held, apply=False).plan.extra["gamma_choice"]
    most = max(c["achieved"] for c in choice["candidates"])
    winner = next(c for c in choice["candidates"] if c["gamma"] == choice["chosen"])
    assert choice["slack"] == 0.0 and (winner["achieved"] >= 0.3 or winner["achieved"] == most)
    free_choice = prune(model, tokenizer, free, apply=False).plan.extra["gamma_choice"]
    assert [c["kl"] for c in free_choice["candidates"]] == [c["kl"] for c in choice["candidates"]]  # same plans
    with pytest.raises(ValueError, match="gamma_sparsity_slack"):
        check_recipe(PruneRecipe("nirvana", 0.3, options={"gamma": "auto", "gamma_sparsity_slack": 2},
                                 calibration=CAL))


def test_the_slack_option_leaves_every_earlier_run_id_unchanged():

    ids = [run_identity(cfg(*TINY, "gamma=auto", *extra))[0]
           for extra in ([], ["pruner.gamma_sparsity_slack=null"], ["pruner.gamma_sparsity_slack=0.01"])]
    assert ids[0] == ids[1] != ids[2]


def test_kls_kept_on_disk_let_an_interrupted_selection_resume_without_a_forward(tokenizer, tmp_path):
    """γ by KL on a 0.5B model is hours of probe forwards on a CPU: with the score cache on, every KL is appended
    to the model's memo file as it is measured, and the next run (here: the same one again) reads it instead of
    running the probe — same choice, same numbers. Another model's weights get another file."""
    from nirvana.probe import kl_memo_path

    recipe = PruneRecipe("nirvana", 0.3, options={"gamma": [1.0, 3.36]},
                         calibration=dataclasses.replace(CAL, selection="kl", candidates=2), measure_kl=True,
                         score_cache=str(tmp_path / "cache"))

    def run():
        model, forwards = tiny_model("llama"), []
        handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
        outcome = prune(model, tokenizer, recipe, apply=False)
        handle.remove()
        return outcome, len(forwards), kl_memo_path(recipe.score_cache, model)

    first, n_first, path = run()
    lines = path.read_text().splitlines()
    assert n_first > 0 and len(lines) == len(KLMemo(path).values) == 2 * 2  # 2 draws × 2 γ, each measured once
    path.write_text(path.read_text() + '{"plan": "torn')  # a writer killed mid-line
    again, n_again, _ = run()
    assert n_again == 0  # scores from the score cache, KLs from the memo: no forward at all
    assert again.plan.same_decision(first.plan) and again.kl_probe == first.kl_probe
    assert again.plan.extra["gamma_choice"] == first.plan.extra["gamma_choice"]
    assert again.calibration["candidates"] == first.calibration["candidates"]
    assert kl_memo_path(recipe.score_cache, tiny_model("llama", seed=1)) != path
