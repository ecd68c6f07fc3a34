"""The searched allocation (nirvana.allocation.search, nirvana.pruners.search) on tiny models: the weight budget kept
exactly, elitism, determinism, resuming, decoding, the refusals, and the run entry end to end."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from nirvana.adapters import get_adapter
from nirvana.allocation.search import SearchConfig, SearchSpace, exchange_quantum, search_allocation
from nirvana.calibration import CalibrationConfig, ProbeConfig
from nirvana.pipeline import PruneRecipe, check_recipe, prune
from nirvana.probe import KLProbe
from nirvana.pruners import compute_plans, score_units
from nirvana.tiny import tiny_model

CAL = CalibrationConfig(source="pydoc", n_samples=4, seq_len=32, seed=0,
                        probe=ProbeConfig(n_samples=8, seq_len=16, documents=10, batch_size=4))
FAST = SearchConfig(generations=4, offspring=4, survivors=[2], windows=[4, 8], heldout_windows=0)


def _removed_weights(model, plan) -> int:
    """Attention + MLP weights a plan removes, counted from its kept units (the closed form's budget)."""
    return sum((layer.attention.n_units - len(a)) * layer.attention.weight_cost
               + (layer.mlp.n_units - len(m)) * layer.mlp.weight_cost
               for layer, (a, m) in zip(get_adapter(model).layers(), plan.kept_units(), strict=True))


def _start(ids, family: str = "llama", sparsity: float = 0.4):
    """A tiny model, its NIRVANA unit scores, its own (global) plan and the search space around that plan."""
    model = tiny_model(family)
    scores = score_units(model, ids, "nirvana")
    (plan,) = compute_plans(model, ids, "nirvana", sparsity, [1.0])
    space = SearchSpace(get_adapter(model).layers(), scores, [(list(a), list(m)) for a, m in plan.kept_units()],
                        int(plan.extra.get("round_to", 1)))
    return model, scores, plan, space


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_every_mutation_keeps_the_weight_budget_exactly(family, calib_ids):
    model, _, plan, space = _start(calib_ids, family)
    budget = space.removed_weights(space.start)
    assert budget == _removed_weights(model, plan)
    rng, parent, moved = random.Random(0), space.start, 0
    for _ in range(300):
        child = space.mutate(parent, rng, max_moves=3)
        if child is None:
            continue
        moved += 1
        assert space.removed_weights(child) == budget
        for i, (a, m) in enumerate(zip(child.attention, child.mlp, strict=True)):
            assert 1 <= a <= space.n_att[i] and space.valid_width(i, m)
        kept = space.decode(child)
        assert [(len(a), len(m)) for a, m in kept] == list(zip(child.attention, child.mlp, strict=True))
        parent = child
    assert moved > 100  # the space has room: the search is not stuck at its start


def test_a_start_with_an_emptied_mlp_stays_searchable_and_no_other_mlp_empties(calib_ids):
    model, scores, plan, _ = _start(calib_ids)
    kept = [(list(a), list(m)) for a, m in plan.kept_units()]
    kept[0] = (kept[0][0], [])  # FLAP may empty a layer's MLP
    space = SearchSpace(get_adapter(model).layers(), scores, kept, 8)
    rng, parent = random.Random(1), space.start
    for _ in range(200):
        parent = space.mutate(parent, rng, max_moves=3) or parent
        assert all(m >= 8 for m in parent.mlp[1:]) and space.removed_weights(parent) == space.removed_weights(space.start)


def test_decoding_the_starting_allocation_gives_the_starting_plan(calib_ids):
    _, _, plan, space = _start(calib_ids)
    assert space.decode(space.start) == [(list(a), list(m)) for a, m in plan.kept_units()]


def test_a_layer_gives_its_lowest_scoring_units_first_and_takes_its_best_pruned_ones(calib_ids):
    _, scores, plan, space = _start(calib_ids)
    x = space.start.copy()
    x.mlp[0] -= space.r
    x.mlp[1] += space.r
    kept = space.decode(x)
    start = plan.kept_units()
    dropped = set(start[0][1]) - set(kept[0][1])
    added = set(kept[1][1]) - set(start[1][1])
    s0, s1 = scores.mlp[0].tolist(), scores.mlp[1].tolist()
    assert max(s0[u] for u in dropped) <= min(s0[u] for u in kept[0][1])
    assert min(s1[u] for u in added) >= max(s1[u] for u in range(len(s1)) if u not in kept[1][1])


def test_the_exchange_quantum_is_the_smallest_equal_weight_trade():
    # SmolLM2-135M: a group weighs 2·64·(3+1)·576 = 294,912 weights, a neuron 3·576 = 1,728, round_to 8
    n_g, n_m = exchange_quantum([294_912] * 30, [1_728] * 30, 8, 90)
    assert n_g * 294_912 == n_m * 1_728 and n_m % 8 == 0 and (n_g, n_m) == (3, 512)
    assert exchange_quantum([294_912] * 30, [1_728] * 30, 8, 8) is None  # more than a quarter of the groups


def _search(model, plan, config, cache=None, tokenizer=None, **kw):
    from nirvana.pruners.search import searched_plan

    probe = KLProbe.build(model, tokenizer, CAL, cache)
    scores = score_units(model, kw.pop("ids"), "nirvana")
    return searched_plan(model, scores, plan, config, probe, state_dir=cache, progress=False), probe


def test_the_search_keeps_the_budget_and_never_ends_worse_than_its_start(tokenizer, calib_ids, tmp_path):
    model = tiny_model("llama")
    (start,) = compute_plans(model, calib_ids, "nirvana", 0.4, [1.0])
    best, probe = _search(model, start, FAST, tmp_path, tokenizer, ids=calib_ids)
    record = best.extra["search"]
    assert _removed_weights(model, best) == _removed_weights(model, start) == record["removed_weights"]
    assert best.achieved_sparsity == start.achieved_sparsity and best.allocator == "search"
    kls = [e["kl"] for e in record["trace"]]
    assert len(kls) == FAST.generations + 1 and kls == sorted(kls, reverse=True)  # elitism: never worse
    assert record["fitness"] <= record["start_fitness"]
    # the fitness is the KL on the last stage's windows, as the probe rates it
    assert probe.rate([start], FAST.windows[-1]) == [record["start_fitness"]]
    assert probe.rate([best], FAST.windows[-1]) == [record["fitness"]]
    assert sum(e["plan_batches"] for e in record["trace"]) > 0 and record["trace"][1]["candidates"] == FAST.offspring


def test_the_search_is_a_function_of_its_seed(tokenizer, calib_ids, tmp_path):
    model = tiny_model("llama")
    (start,) = compute_plans(model, calib_ids, "nirvana", 0.4, [1.0])

    def run(seed, folder):
        config = dataclasses.replace(FAST, seed=seed)
        plan, _ = _search(model, start, config, tmp_path / folder, tokenizer, ids=calib_ids)
        return plan.kept_units(), [(e["kl"], e["accepted"]) for e in plan.extra["search"]["trace"]]

    assert run(0, "a") == run(0, "b")  # no shared state: two fresh caches
    others = [run(seed, f"s{seed}") for seed in (1, 2, 3)]
    assert any(o != run(0, "c") for o in others)  # the seed drives the draws


def test_an_interrupted_search_resumes_to_the_uninterrupted_result(tokenizer, calib_ids, tmp_path):
    model = tiny_model("llama")
    (start,) = compute_plans(model, calib_ids, "nirvana", 0.4, [1.0])
    scores = score_units(model, calib_ids, "nirvana")
    space = SearchSpace(get_adapter(model).layers(), scores, [(list(a), list(m)) for a, m in start.kept_units()],
                        int(start.extra["round_to"]))
    probe = KLProbe.build(model, tokenizer, CAL)

    def rate(kept, windows):
        from nirvana.pruners.base import make_plan

        return probe.rate([make_plan(model, get_adapter(model).layers(), k, 0.4, 1.0, "nirvana", "search", None, {})
                           for k in kept], windows)

    whole, record = search_allocation(space, FAST, rate, state_path=tmp_path / "whole.json", progress=False)
    calls = []

    def crashing(kept, windows):  # killed during generation 3
        calls.append(1)
        if len(calls) > 1 + 2 * len(FAST.windows):
            raise KeyboardInterrupt
        return rate(kept, windows)

    state = tmp_path / "state.json"
    with pytest.raises(KeyboardInterrupt):
        search_allocation(space, FAST, crashing, state_path=state, progress=False)
    assert json.loads(state.read_text())["generations"] == 2
    resumed, again = search_allocation(space, FAST, rate, state_path=state, progress=False)
    assert again["resumed_from"] == 2 and resumed == whole
    assert [(e["kl"], e["accepted"]) for e in again["trace"]] == [(e["kl"], e["accepted"]) for e in record["trace"]]
    # a longer search extends a shorter one's state; a shorter one reads its result from a longer one's
    longer = dataclasses.replace(FAST, generations=6)
    _, extended = search_allocation(space, longer, rate, state_path=state, progress=False)
    assert extended["resumed_from"] == FAST.generations and len(extended["trace"]) == 7
    shorter = dataclasses.replace(FAST, generations=2)
    _, early = search_allocation(space, shorter, rate, state_path=state, progress=False)
    assert early["trace"] == extended["trace"][:3]


def test_the_searched_run_through_the_pipeline_is_labelled_and_resumable(tokenizer, tmp_path):
    def run():
        recipe = PruneRecipe("nirvana", 0.4, options={"allocator": "search", "search": FAST}, variant="search",
                             calibration=CAL, score_cache=str(tmp_path), progress=False, measure_kl=True)
        return prune(tiny_model("llama"), tokenizer, recipe, apply=False)

    first = run()
    assert first.plan.allocator == "search" and first.plan.extra["search"]["resumed_from"] is None
    second = run()  # the state in the score cache: nothing left to search
    assert second.plan.same_decision(first.plan) and second.plan.extra["search"]["resumed_from"] == FAST.generations


@pytest.mark.parametrize("pruner", ["flap", "magnitude"])
def test_other_scorers_search_too(pruner, tokenizer, tmp_path):
    recipe = PruneRecipe(pruner, 0.4, options={"allocator": "search", "search": FAST}, variant="search",
                         calibration=CAL, score_cache=str(tmp_path), progress=False)
    model = tiny_model("llama")
    out = prune(model, tokenizer, recipe, apply=False)
    record = out.plan.extra["search"]
    assert record["fitness"] <= record["start_fitness"] and out.plan.pruner == pruner
    assert record["start_plan"]["allocator"] == ("standardized_global" if pruner == "flap" else "global")
    if pruner == "flap":  # every candidate compensated as FLAP compensates its own plan
        assert out.plan.output_bias
    else:  # |W| with the global threshold is far from the best allocation of a random tiny model: the search finds better
        assert record["fitness"] < record["start_fitness"]


def test_what_cannot_be_searched_is_refused_before_any_model():
    from nirvana.pruners.config import FlapConfig, WandaSpConfig

    with pytest.raises(ValueError, match="sequential pass"):
        WandaSpConfig(allocator="search")
    with pytest.raises(ValueError, match="configures allocator=search"):
        FlapConfig(search=SearchConfig())
    with pytest.raises(ValueError, match="one search per calibration draw"):
        check_recipe(PruneRecipe("nirvana", 0.4, options={"allocator": "search"},
                                 calibration=CalibrationConfig(source="pydoc", selection="kl")))
    with pytest.raises(ValueError, match="takes one γ"):
        check_recipe(PruneRecipe("nirvana", 0.4, options={"allocator": "search", "gamma": "auto"}, calibration=CAL))
    with pytest.raises(ValueError, match="non-decreasing"):
        SearchConfig(windows=[8, 4])


def test_allocation_search_runs_end_to_end_from_the_experiment_entry(tmp_path):
    from test_experiments import PPL_ONLY, cfg

    from experiments.run import run_experiment
    from nirvana.evaluation.protocol import run_identity

    overrides = [*PPL_ONLY, "allocation=search", "pruner.search.generations=2", "pruner.search.offspring=3",
                 "pruner.search.windows=[4,4]", "pruner.search.heldout_windows=2",
                 f"job.results_file={tmp_path / 'rows.jsonl'}"]
    c = cfg(*overrides)
    assert c.pruner.allocator == "search" and c.pruner.variant == "search"
    assert run_identity(c)[0] != run_identity(cfg(*PPL_ONLY))[0]
    # the held-out report's settings never change the run id
    assert run_identity(cfg(*overrides, "pruner.search.heldout_windows=1"))[0] == run_identity(c)[0]
    rows = run_experiment(c, tmp_path / "run")
    assert {r["pruner"] for r in rows} == {"nirvana:search"}
    by_metric = {r["metric"]: r for r in rows if r["task"] == "search"}
    best = by_metric["kl/best"]
    assert best["value"] <= by_metric["kl/start"]["value"] and len(best["extra"]["trace"]) == 3
    assert all("heldout" in e and e["heldout"]["ppl"] > 1 for e in best["extra"]["trace"])
    assert best["extra"]["heldout"]["set"].endswith("@32")
    plan = json.loads((tmp_path / "run" / "pruning_plan.json").read_text())
    assert plan["allocator"] == "search" and plan["extra"]["search"]["trace"] == best["extra"]["trace"]
    # the report reads the trace and cost back from the rows alone
    from nirvana.reporting.report import build_report

    written = build_report([str(tmp_path / "rows.jsonl")], tmp_path / "report")
    assert {p.name for p in written} >= {"search_cost.md", "search_trace.png"}
    from nirvana.reporting.search import searched_runs
    from nirvana.results import read_rows

    (run,) = searched_runs(read_rows(tmp_path / "rows.jsonl")).to_dict("records")
    assert run["generations"] == 2 and run["KL best"] == best["value"] and run["KL start"] == by_metric["kl/start"]["value"]
    assert run["held-out ppl best"] == best["extra"]["trace"][-1]["heldout"]["ppl"]
    assert run["candidates"] == sum(e["rated"] for e in best["extra"]["trace"])
    assert "nirvana:search" in (tmp_path / "report" / "search_cost.md").read_text()
