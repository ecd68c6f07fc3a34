"""Tables and figures from rows: intervals from per-item results, paired differences to NIRVANA, provenance."""

import math

import numpy as np
import pandas as pd
import pytest
from rows_fixture import RUN, N, fixture_rows, items

from nirvana.reporting import pairing, stats, tables
from nirvana.reporting.report import build_report
from nirvana.results import append_rows, make_row, read_rows

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture
def rows(tmp_path):
    append_rows(tmp_path / "rows.jsonl", fixture_rows())
    return read_rows(tmp_path / "rows.jsonl")


def test_bootstrap_interval_of_a_proportion_matches_the_normal_approximation():
    x = items(0.5, 0)
    iv = stats.mean_of_tasks({"t": x}, resamples=4000)
    half = 1.96 * math.sqrt(0.25 / N)
    assert iv.value == 0.5 and iv.lo == pytest.approx(0.5 - half, abs=0.01) and iv.hi == pytest.approx(0.5 + half, abs=0.01)
    assert stats.mean_of_tasks({"t": x}, seed=3) == stats.mean_of_tasks({"t": x}, seed=3)  # seeded


def test_paired_difference_is_exact_on_identical_items_and_narrower_than_separate_intervals():
    a = items(0.6, 1)
    assert stats.paired_difference({"t": a}, {"t": a}) == stats.Interval(0.0, 0.0, 0.0)
    b = list(a)
    for i in [i for i, v in enumerate(a) if v == 1][:10]:  # b gets 10 of a's correct items wrong, nothing else
        b[i] = 0.0
    d = stats.paired_difference({"t": a}, {"t": b})
    assert d.value == pytest.approx(10 / N) and d.excludes(0.0)
    separate = stats.mean_of_tasks({"t": a}).hi - stats.mean_of_tasks({"t": a}).lo
    assert d.hi - d.lo < separate / 2  # pairing removes the items' shared difficulty
    with pytest.raises(ValueError, match="paired items must be the same"):
        stats.paired_difference({"t": a}, {"t": a[:-1]})


def test_the_bootstrap_variance_in_closed_form_is_what_the_replicates_estimate():
    """Means of resampled items: the bootstrap's variance has a closed form, Σ_t var(x_t) / n_t / K² — the
    draw-aware view uses it instead of 2,000 noisy replicates (no bootstrap seed can flip a word)."""
    tasks = {"a": items(0.3, 1), "b": np.linspace(0, 1, N).tolist(), "c": items(0.8, 3)[:50]}
    _, reps = stats.mean_of_tasks_replicates(tasks, resamples=20000, seed=5)
    assert stats.bootstrap_variance(tasks) == pytest.approx(reps.var(), rel=0.03)
    value, reps = stats.mean_of_tasks_replicates(tasks, seed=5)  # the interval is the replicates' percentiles
    assert stats.mean_of_tasks(tasks, seed=5) == stats.Interval(value, *np.percentile(reps, [2.5, 97.5]))


def test_an_interval_excludes_its_null_only_strictly():
    ratio = stats.Interval(1.03, 1.01, 1.05)  # a perplexity ratio: its null is 1, not 0
    assert ratio.excludes(1.0) and ratio.excludes(0.0)
    assert not stats.Interval(1.0, 1.0, 1.02).excludes(1.0)  # touching the null is no evidence
    assert not stats.Interval(0.0, -0.01, 0.02).excludes(0.0)


def test_perplexity_interval_over_windows():
    nll = [31 * 2.0] * 8
    assert stats.perplexity(nll, 31) == stats.Interval(math.exp(2.0), math.exp(2.0), math.exp(2.0))
    iv = stats.perplexity(np.linspace(50, 70, 20).tolist(), 31)
    assert iv.lo < iv.value < iv.hi and iv.value == pytest.approx(math.exp(60 / 31))
    assert stats.perplexity_ratio(nll, nll, 31).value == 1.0


def test_table_values_intervals_and_paired_differences(rows):
    wide = tables.table2(rows)
    assert list(wide.columns) == ["achieved_sparsity", "params_kept", "arc_easy", "piqa", "avg", "wiki_passages@128"]
    assert list(wide.index) == [("dense", 0.0), ("nirvana (γ=3.36)", 0.2), ("flap", 0.2), ("nirvana (γ=3.36)", 0.4),
                                ("flap", 0.4)]
    long = pairing.long_table(rows).set_index(["method", "sparsity", "column"])
    avg = long.loc[("flap", 0.2, "avg")]
    # the mean over tasks is recomputed from the items (0.5 and 0.6 correct) with a bootstrap interval
    assert avg["value"] == 0.55 - 0.0 and avg["lo"] < 0.55 < avg["hi"]
    assert avg["value"] == pytest.approx(np.mean([0.5, 0.6]))
    # flap is 0.05 below nirvana on both tasks, on the same items: the paired interval excludes 0
    assert avg["delta"] == pytest.approx(-0.05) and avg["delta_hi"] < 0 and avg["significant"]
    ppl = long.loc[("flap", 0.2, "wiki_passages@128")]
    assert ppl["delta"] == pytest.approx(0.55 / 0.5)  # ppl ratio flap ÷ nirvana (10/base each)
    assert not long.loc[("flap", 0.2, "avg"), "unequal"] and long.loc[("flap", 0.4, "avg"), "unequal"]  # 0.35 vs 0.396
    shown = tables.display_table(pairing.long_table(rows))
    line = shown[(shown["method"] == "flap") & (shown["sparsity"] == "0.4")].iloc[0]
    assert line["Δavg vs nirvana"].endswith("* †") and line["achieved"] == "0.3500"


def test_verdicts_are_four_words_read_from_the_printed_interval_and_the_margins(rows):
    v = tables.verdict
    assert v(1.10, 1.08, 1.12, perplexity=True) == "worse" and v(0.90, 0.88, 0.92, perplexity=True) == "better"
    assert v(+0.02, 0.01, 0.03, perplexity=False) == "better" and v(-0.02, -0.03, -0.01, perplexity=False) == "worse"
    # inside ±1.5 points / 1/1.05–1.05×: shown not to matter; straddling a margin and 0: the data cannot say
    assert v(0.002, -0.012, 0.014, perplexity=False) == "equivalent"
    assert v(0.002, -0.02, 0.024, perplexity=False) == "inconclusive"
    assert v(1.02, 0.96, 1.08, perplexity=True) == "inconclusive" and v(math.nan, 1, 1, perplexity=True) == "–"
    # excludes 1 but inside the margin: equivalent comes first — including another thread count's rounding
    assert v(1.03, 1.01, 1.049, perplexity=True) == "equivalent" and v(1.0001, 1.00005, 1.0002, True) == "equivalent"
    assert v(0.96, 0.951, 0.97, perplexity=True) == "better"  # 0.951 < 1/1.05: not inside the (log-symmetric) band
    # the interval's level is the unadjusted 95 %: the words never contradict the interval printed beside them
    assert v(0.016, 0.001, 0.031, perplexity=False) == "better" and v(0.0, -0.015, 0.015, False) == "inconclusive"
    table = tables.verdict_table(pairing.long_table(rows)).set_index(["method", "sparsity"])
    assert ("dense", "0") not in table.index  # nothing of it is paired with NIRVANA
    flap = table.loc[("flap", "0.2")]  # 0.05 below NIRVANA on every item-paired task, perplexity 1.1× on windows
    assert flap["zero-shot"] == "worse" and flap["better · equivalent · worse · inconclusive vs NIRVANA"] == "0 · 0 · 1 · 0"
    assert table.loc[("flap", "0.4"), "zero-shot"].endswith(" †")  # it removes 35 % where NIRVANA removes 39.6 %
    long = pairing.long_table(rows)
    ppl_only_first = tables.verdict_table(long[~((long["method"] == "flap") & (long["sparsity"] == 0.2)
                                                 & (long["column"] == "avg"))], seq_len=128)
    assert list(ppl_only_first.columns) == ["method", "sparsity", "zero-shot", "ppl wiki_passages@128",
                                            "better · equivalent · worse · inconclusive vs NIRVANA"]
    assert ppl_only_first.iloc[0]["zero-shot"] == "–"  # flap at 0.2 now has no zero-shot: no verdict, not a gap


def test_grid_folds_the_summarys_comparisons_into_one_line_per_method(rows):
    long = pairing.long_table(rows)
    grid = tables.grid_table(long, seq_len=128)
    assert grid.attrs["cell"] == "zero-shot Δ vs NIRVANA (points) [95 % interval] · wiki_passages@128 ÷ NIRVANA"
    grid = grid.set_index("method")
    assert list(grid.index) == ["flap"] and list(grid.columns) == ["20%", "40%"]  # dense and NIRVANA: nothing paired
    summary = tables.summary_table(long, seq_len=128, against="nirvana").set_index(["method", "sparsity"])
    at_20 = summary.loc[("flap", "0.2")]
    zero_shot, ratio = grid.loc["flap", "20%"].split(" · ")
    assert zero_shot == at_20["Δ vs NIRVANA (points)"].replace(" *", "*")  # the same numbers, marks kept
    assert ratio == at_20["wiki_passages@128 ÷ NIRVANA"].split(" [")[0] + "*" == "1.10×*"
    assert grid.loc["flap", "40%"].endswith(" †")  # 35 % removed vs NIRVANA's 39.6 %
    no_flap_at_40 = long[~((long["method"] == "flap") & (long["sparsity"] == 0.4))]
    assert list(tables.grid_table(no_flap_at_40, seq_len=128).columns) == ["method", "20%"]  # nothing compared at 40 %
    only_at_20 = long[(long["method"] == "flap") & (long["sparsity"] == 0.2)].assign(method="taylor")
    with_taylor = tables.grid_table(pd.concat([long, only_at_20]), seq_len=128).set_index("method")
    assert with_taylor.loc["taylor", "40%"] == "not run" and with_taylor.loc["taylor", "20%"] == grid.loc["flap", "20%"]
    rounding = long.copy()  # excludes 1 but shows as 1.00× (another thread count's rounding): equivalent, no star
    at = (rounding["method"] == "flap") & (rounding["sparsity"] == 0.2) & (rounding["column"] == "wiki_passages@128")
    rounding.loc[at, ["delta", "delta_lo", "delta_hi"]] = [1.001, 1.0005, 1.0015]
    assert tables.grid_table(rounding, seq_len=128).iloc[0]["20%"].endswith(" · 1.00×≈")
    rounded = tables.summary_table(rounding, seq_len=128).set_index(["method", "sparsity"]).loc[("flap", "0.2")]
    assert rounded["wiki_passages@128 ÷ NIRVANA"] == "1.00× [1.00, 1.00] ≈"  # the summary follows the same rule
    straddling = long.copy()  # includes 1 and reaches beyond the margin: inconclusive, no mark at all
    straddling.loc[at, ["delta", "delta_lo", "delta_hi"]] = [1.01, 0.9, 1.12]
    assert tables.grid_table(straddling, seq_len=128).iloc[0]["20%"].endswith(" · 1.01×")
    no_ppl_at_20 = long[~((long["method"] == "flap") & (long["sparsity"] == 0.2) & (long["column"] != "avg"))]
    assert tables.grid_table(no_ppl_at_20, seq_len=128).iloc[0]["20%"] == f"{zero_shot} · –"  # keeps the header's order


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the project's git history")
def test_dirty_rows_whose_code_is_a_commits_are_verified_not_warned_about(tmp_path, caplog):
    """Rows recorded as "<old>-dirty" on a copy with stale git metadata, whose code tree is a commit's code: the
    table names that commit and raises no dirty warning; rows without a code tree (older rows) stay dirty."""
    from nirvana.provenance import _code_trees

    tree, commit = next(iter(_code_trees(str(ROOT)).items()))
    append_rows(tmp_path / "rows.jsonl", [dict(r, git_hash="abc-dirty", code_tree=tree) for r in fixture_rows()])
    build_report([str(tmp_path / "rows.jsonl")], tmp_path / "out")
    md = (tmp_path / "out" / "table2.md").read_text()
    assert f"abc-dirty (code identical to {commit})" in md and "dirty work tree" not in md + caplog.text
    rows = read_rows(tmp_path / "rows.jsonl")
    rows.loc[0, "code_tree"] = None
    assert tables.provenance(rows)["dirty"] == ["abc-dirty"]


def test_allocation_figures_come_from_the_rows_widths_and_from_plans_for_older_rows(tmp_path, calib_ids):
    from nirvana.pruners import compute_plan
    from nirvana.tiny import tiny_model

    plan = compute_plan(tiny_model("llama"), calib_ids, "nirvana", sparsity=0.4, gamma=1.0)
    rows = [r if r["metric"] != "kept_fraction" or r["run_id"] != "nirvana0.2"
            else dict(r, extra={"widths": plan.widths(), "plan": plan.summary()}) for r in fixture_rows()]
    append_rows(tmp_path / "rows.jsonl", rows)
    plan.save(tmp_path / "plan.json")  # an older run's saved plan (nirvana at 0.4: no widths in its rows)
    written = build_report([str(tmp_path / "rows.jsonl")], tmp_path / "out", plans=[str(tmp_path / "plan.json")])
    assert {p.name for p in written if p.name.startswith("allocation")} == {"allocation_nirvana_s0.2.png",
                                                                             "allocation_nirvana_s0.4.png"}
    assert plan.widths()["kept_neurons"] == [len(lp.kept_neurons) for lp in plan.layers]


def test_a_pruned_model_without_its_plan_is_an_error_not_full_size(tmp_path):
    r = {**RUN, "run_id": "x", "pruner": "flap", "sparsity": 0.2, "gamma": None}
    append_rows(tmp_path / "r.jsonl", [make_row(r, "piqa", "acc", 0.5)])
    with pytest.raises(ValueError, match="parameters kept unknown"):
        tables.table2(read_rows(tmp_path / "r.jsonl"))


def test_report_writes_tables_figures_paper_comparison_and_warns_about_dirty_rows(tmp_path, rows, caplog):
    dirty = [dict(r, git_hash="abc-dirty", code_tree="0" * 40) for r in fixture_rows()]  # code no commit has
    append_rows(tmp_path / "rows.jsonl", dirty)
    paper = tmp_path / "paper.csv"
    pd.DataFrame([{"model": "m", "method": "nirvana (γ=3.36)", "sparsity": 0.2, "column": "arc_easy",
                   "value": 0.5}]).to_csv(paper, index=False)
    written = build_report([str(tmp_path / "rows.jsonl")], tmp_path / "out", paper=str(paper), command="make x")
    names = {p.name for p in written}
    assert {"table2.md", "table2.csv", "table2.tex", "table2_paired.md", "table2_verdict.md", "table2_vs_paper.md",
            "metrics_vs_sparsity.png", "paired_differences.png", "kl_vs_perplexity.png"} <= names
    md = (tmp_path / "out" / "table2.md").read_text()
    assert "dirty work tree" in md and "Produced by `make x`" in md and "abc-dirty" in caplog.text
    assert "0.0500" in (tmp_path / "out" / "table2_vs_paper.md").read_text()  # ours 0.55 − paper 0.50
    csv = pd.read_csv(tmp_path / "out" / "table2.csv")
    assert {"lo", "hi", "delta", "delta_lo", "delta_hi", "significant", "unequal"} <= set(csv.columns)
    # The headline view restates the long table's numbers: the zero-shot average in points, with its interval.
    summary = (tmp_path / "out" / "table2_summary.md").read_text()
    for view in ("summary", "grid", "verdict"):  # single-draw words: their headers say what they do not cover
        text = (tmp_path / "out" / f"table2_{view}.md").read_text().split("\n\n")[0]
        assert "**unadjusted**" in text and "±1.5 points" in text and "0.952–1.05×" in text and "tie" not in text
    for _, r in csv[csv["column"] == "avg"].iterrows():
        assert f"{100 * r['value']:.1f} [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]" in summary


def test_empty_paper_file_ships_with_its_header():
    text = (ROOT / "results" / "paper" / "table2.csv").read_text().strip().splitlines()
    assert text == ["model,method,sparsity,column,value"]


def test_the_forest_plot_gives_every_panel_the_same_rows():
    """A perplexity-only baseline still gets its own row, so no panel's point lands on another method's label."""
    import pandas as pd

    from nirvana.reporting.figures import forest_cells

    long = pd.DataFrame([("flap", 0.2, "avg", 0.01), ("flap", 0.2, "ppl@128", 0.9), ("magnitude", 0.2, "ppl@128", 9.0),
                         ("flap", 0.4, "ppl@128", 1.2), ("nirvana", 0.2, "avg", None), ("taylor", 0.2, "other", 0.5)],
                        columns=["method", "sparsity", "column", "delta"])
    assert forest_cells(long, ["avg", "ppl@128"]) == [("flap", 0.2), ("magnitude", 0.2), ("flap", 0.4)]


def test_methods_sort_the_same_whatever_order_they_arrive_in():
    """Variants of one family must not keep the order a set iterated in (it changes with each process's string
    hashing): the figures' colours and the tables' rows would change on every re-report of the same rows."""
    import itertools

    labels = ["nirvana γ=auto", "flap", "wanda_sp:matched", "nirvana", "my_method", "nirvana +bias", "wanda_sp"]
    orders = {tuple(sorted(p, key=pairing.method_rank)) for p in itertools.permutations(labels)}
    assert orders == {("nirvana", "nirvana +bias", "nirvana γ=auto", "wanda_sp", "wanda_sp:matched", "flap",
                       "my_method")}


def test_quantized_runs_are_their_own_methods_in_tables():
    from nirvana.reporting.pairing import method_label

    assert method_label("nirvana", 3.36, "float32") == method_label("nirvana", 3.36) == "nirvana (γ=3.36)"
    assert method_label("nirvana", 3.36, "w8a8") == "nirvana (γ=3.36) [w8a8]"
    assert method_label("flap", None, "int4_wo-g128") == "flap [int4_wo-g128]"


def test_each_method_is_paired_with_the_reference_the_table_asks_for():
    from nirvana.reporting.pairing import reference_of

    methods = ["dense", "dense [w8a8]", "nirvana (γ=3.36)", "nirvana (γ=3.36) [w8a8]", "nirvana:auto", "flap",
               "flap [w8a8]", "flap:kl"]
    # NIRVANA by default, quantized the same way as the method (never a float NIRVANA for a w8a8 FLAP)
    assert reference_of("flap", methods) == "nirvana (γ=3.36)"
    assert reference_of("flap [w8a8]", methods) == "nirvana (γ=3.36) [w8a8]"
    assert reference_of("nirvana:auto", methods) == "nirvana (γ=3.36)"
    assert reference_of("nirvana (γ=3.36)", methods) is None
    # base: each quantized model with the model it came from; models used as pruned have no base
    assert reference_of("flap [w8a8]", methods, "base") == "flap"
    assert reference_of("dense [w8a8]", methods, "base") == "dense"
    assert reference_of("flap", methods, "base") is None
    # another pruner by its label: the goal comparison of the beyond table
    assert reference_of("nirvana:auto", methods, "flap:kl") == "flap:kl"
    assert reference_of("flap:kl", methods, "flap:kl") is None


def _quantized(rows: list[dict], scheme: str, shift: int) -> list[dict]:
    """The fixture's runs as if quantized: the same items, `shift` of FLAP's correct arc_easy answers now wrong."""
    out = []
    for r in rows:
        r = {**r, "run_id": r["run_id"] + scheme, "dtype": scheme, "extra": dict(r["extra"] or {})}
        if r["pruner"] == "flap" and r["task"] == "arc_easy" and r["metric"] == "acc":
            items = list(r["extra"]["items"])
            for i in [i for i, v in enumerate(items) if v == 1][:shift]:
                items[i] = 0.0
            r["extra"]["items"], r["value"] = items, float(np.mean(items))
        out.append(r)
    return out


def test_quantized_models_are_paired_with_their_float_twins(tmp_path):
    append_rows(tmp_path / "rows.jsonl", fixture_rows() + _quantized(fixture_rows(), "w8a8", shift=20))
    long = pairing.long_table(read_rows(tmp_path / "rows.jsonl"), against="base")
    long = long.set_index(["method", "sparsity", "column"])
    # 20 of 200 arc_easy items lost by quantization: -0.1 on the task, -0.05 on the mean of two tasks
    assert long.loc[("flap [w8a8]", 0.2, "arc_easy"), "delta"] == pytest.approx(-0.1)
    assert long.loc[("flap [w8a8]", 0.2, "avg"), "delta"] == pytest.approx(-0.05)
    assert long.loc[("flap [w8a8]", 0.2, "avg"), "reference"] == "flap"
    # the other models are quantized losslessly here: exactly no difference, and the float models have none
    assert long.loc[("dense [w8a8]", 0.0, "wiki_passages@128"), "delta"] == 1.0
    assert long.loc[("nirvana (γ=3.36) [w8a8]", 0.4, "avg"), "delta"] == 0.0
    assert long.loc[("flap", 0.2, "avg"), "delta"] != long.loc[("flap", 0.2, "avg"), "delta"]  # nan


def test_report_writes_one_set_of_tables_per_reference_and_refuses_unknown_ones(tmp_path, rows):
    append_rows(tmp_path / "rows.jsonl", fixture_rows() + _quantized(fixture_rows(), "int8_wo", shift=10))
    written = build_report([str(tmp_path / "rows.jsonl")], tmp_path / "out", references=["base", "flap"])
    names = {p.name for p in written}
    assert {"table2_summary.md", "table2_vs_flap_summary.md", "paired_differences.png",
            "paired_differences_vs_flap.png"} <= names
    assert "Δ vs base (points)" in (tmp_path / "out" / "table2_summary.md").read_text()
    grid = tables.grid_table(pairing.long_table(read_rows(tmp_path / "rows.jsonl"), against="base"), seq_len=128)
    dense = grid.set_index("method").loc["dense [int8_wo]"]
    assert dense["20%"] == dense["40%"] == "–" and dense["0%"].startswith("+0.0 [")  # a dense model has no 20 % twin
    vs_flap = (tmp_path / "out" / "table2_vs_flap_summary.md").read_text()
    assert "Δ vs flap (points)" in vs_flap and "+5.0 [" in vs_flap  # NIRVANA 0.05 above FLAP at 0.2, in points
    with pytest.raises(ValueError, match=r"reference 'flap:kl': no such method.*'flap', 'nirvana'"):
        build_report([str(tmp_path / "rows.jsonl")], tmp_path / "bad", references=["flap:kl"])
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    # a sweep in progress: its report leaves out the references without rows yet, when asked to
    written = build_report([str(tmp_path / "rows.jsonl")], tmp_path / "partial", references=["flap:kl", "flap"],
                           skip_absent=True)
    assert "table2_summary.md" in {p.name for p in written}
    assert "Δ vs flap (points)" in (tmp_path / "partial" / "table2_summary.md").read_text()


def test_report_can_tabulate_only_the_named_pruners_and_refuses_unknown_ones(tmp_path):
    """A study that adds a few methods to Table 2's rows (gguf_round, quant) lists those, what they pair with and
    the dense model, not all of Table 2."""
    append_rows(tmp_path / "rows.jsonl", fixture_rows())
    build_report([str(tmp_path / "rows.jsonl")], tmp_path / "all")
    build_report([str(tmp_path / "rows.jsonl")], tmp_path / "out", references=["flap"], pruners=["flap"])
    listed = lambda d: set(pd.read_csv(tmp_path / d / "table2.csv")["method"])  # noqa: E731
    assert {"dense", "flap"} < listed("all") and any(m.startswith("nirvana") for m in listed("all"))
    assert listed("out") == {"dense", "flap"}
    with pytest.raises(ValueError, match=r"--pruners \['flap:round32'\]: no rows of them; the rows have \["):
        build_report([str(tmp_path / "rows.jsonl")], tmp_path / "bad", pruners=["flap", "flap:round32"])
    assert not (tmp_path / "bad").exists()


def test_recovered_models_get_their_own_label_and_pair_with_the_model_they_came_from(tmp_path):
    from nirvana.reporting.pairing import method_label

    assert method_label("flap", None, "float32", "lora_offline") == "flap [lora_offline]"
    assert method_label("nirvana", 3.36, "int8_wo", "lora") == "nirvana (γ=3.36) [lora+int8_wo]"
    recovered = [{**r, "run_id": r["run_id"] + "r", "extra": {**(r["extra"] or {}), "recovery": "lora_offline"}}
                 for r in fixture_rows()]
    append_rows(tmp_path / "rows.jsonl", fixture_rows() + recovered)
    rows = read_rows(tmp_path / "rows.jsonl")
    base = pairing.long_table(rows, against="base").set_index(["method", "sparsity", "column"])
    assert base.loc[("flap [lora_offline]", 0.4, "avg"), "reference"] == "flap"
    vs_nirvana = pairing.long_table(rows).set_index(["method", "sparsity", "column"])
    # recovered FLAP is compared with recovered NIRVANA (the same budget), not with NIRVANA as pruned
    assert vs_nirvana.loc[("flap [lora_offline]", 0.2, "avg"), "reference"] == "nirvana (γ=3.36) [lora_offline]"
    assert vs_nirvana.loc[("flap [lora_offline]", 0.2, "avg"), "delta"] == pytest.approx(-0.05)


def test_stage_gains_say_whether_recovery_helped_a_method_more_than_nirvana(tmp_path):
    """Recovered FLAP gets 20 of 200 arc_easy items right that it missed; recovered NIRVANA changes nothing."""
    recovered = []
    for r in fixture_rows():
        r = {**r, "run_id": r["run_id"] + "r", "extra": {**(r["extra"] or {}), "recovery": "lora"}}
        if r["pruner"] == "flap" and r["task"] == "arc_easy" and r["metric"] == "acc":
            items = list(r["extra"]["items"])
            for i in [i for i, v in enumerate(items) if v == 0][:20]:
                items[i] = 1.0
            r["extra"]["items"], r["value"] = items, float(np.mean(items))
        recovered.append(r)
    append_rows(tmp_path / "rows.jsonl", fixture_rows() + recovered)
    gains = tables.stage_gains(read_rows(tmp_path / "rows.jsonl"), seq_len=128).set_index(["method", "sparsity"])
    assert gains.loc[("flap [lora]", "0.2"), "compared with"] == "flap"
    assert gains.loc[("flap [lora]", "0.2"), "zero-shot Δ after − before (points)"].startswith("+5.0 [")
    assert gains.loc[("flap [lora]", "0.2"), "Δ − NIRVANA's Δ (points)"].startswith("+5.0 [")  # NIRVANA gained 0
    assert gains.loc[("flap [lora]", "0.2"), "Δ − NIRVANA's Δ (points)"].endswith("*")
    assert gains.loc[("nirvana (γ=3.36) [lora]", "0.2"), "zero-shot Δ after − before (points)"] == "+0.0 [+0.0, +0.0]"
    assert gains.loc[("flap [lora]", "0.4"), "wiki_passages@128 after ÷ before"] == "1.00× [1.00, 1.00]"
    assert ("dense", "0") not in gains.index  # nothing was done to it
    assert tables.stage_gains(pd.DataFrame(fixture_rows()), seq_len=128).empty  # no stages: no table


def test_ratio_panels_label_more_than_one_tick_whatever_the_spread():
    """8-bit vs float ratios (0.998 … 1.003) on a log axis showed one label, "1"; failed prunes span decades."""
    import matplotlib.pyplot as plt

    from nirvana.reporting.figures import ratio_axis

    for values, scale in (([0.998, 1.0, 1.003], "linear"), ([0.4, 1.0, 6000.0], "log"), ([0.3, 1.0, 3.0], "log")):
        fig, ax = plt.subplots()
        ax.errorbar(values, range(len(values)), fmt="o")
        ratio_axis(ax, values)
        fig.canvas.draw()
        lo, hi = ax.get_xlim()
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
        assert ax.get_xscale() == scale and len(labels) >= 2, (values, labels)
        plt.close(fig)


def test_a_method_has_one_colour_in_every_panel_and_the_legend_names_every_line():
    """Perplexity-only baselines (magnitude, random) have no zero-shot line: with a colour cycle per panel the
    zero-shot legend's colours named other methods' perplexity lines."""
    import matplotlib.pyplot as plt

    from nirvana.reporting.figures import metrics_figure

    cells = [("dense", 0.0, "avg", 0.45), ("dense", 0.0, "wiki@128", 20.0)]
    cells += [(m, s, "avg", 0.4 - s / 10) for m in ("nirvana", "taylor", "flap") for s in (0.2, 0.4)]
    cells += [(m, s, "wiki@128", 30 + s * 10) for m in ("nirvana", "magnitude", "random", "taylor", "flap") for s in (0.2, 0.4)]
    long = pd.DataFrame(cells, columns=["method", "sparsity", "column", "value"]).assign(lo=lambda d: d["value"],
                                                                                         hi=lambda d: d["value"])
    fig = metrics_figure(long)
    colours = {}
    for ax in fig.axes:
        lines = [(c.get_label(), c.lines[0]) for c in ax.containers]  # each method's errorbar
        lines += [(line.get_label(), line) for line in ax.get_lines() if line.get_label() == "dense"]
        for label, line in lines:
            colours.setdefault(label, set()).add(line.get_color())
    assert set(colours) == {"nirvana", "magnitude", "random", "taylor", "flap", "dense"}
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for m, c in colours.items()}) == len(colours)  # and no two methods share one
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["dense", "nirvana", "magnitude", "random", "taylor", "flap"]
    plt.close(fig)


def test_runs_with_different_settings_under_one_label_are_warned_about_not_silently_merged(tmp_path):
    import warnings

    append_rows(tmp_path / "rows.jsonl", fixture_rows())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one run per label: quiet
        pairing.cells(read_rows(tmp_path / "rows.jsonl"))
    # the same label from another run (e.g. an option overridden without a variant) shadows FLAP's 20 % cells
    other = [dict(r, run_id="other") for r in fixture_rows() if r["pruner"] == "flap" and r["sparsity"] == 0.2]
    append_rows(tmp_path / "rows.jsonl", other)
    with pytest.warns(UserWarning, match=r"m flap s=0\.2: runs .*other.*pruner\.variant"):
        pairing.cells(read_rows(tmp_path / "rows.jsonl"))


def test_perplexity_panels_end_at_a_broken_models_level_and_the_legend_marks_who_leaves():
    """Magnitude's 10⁶ would squeeze every usable method into a panel's bottom decade."""
    import matplotlib.pyplot as plt

    from nirvana.reporting.figures import OFF_SCALE, metrics_figure

    cells = [("dense", 0.0, "wiki@128", 20.0), ("nirvana", 0.4, "wiki@128", 90.0), ("magnitude", 0.4, "wiki@128", 1e6)]
    long = pd.DataFrame(cells, columns=["method", "sparsity", "column", "value"]).assign(lo=lambda d: d["value"],
                                                                                         hi=lambda d: d["value"])
    fig = metrics_figure(long)
    assert fig.axes[0].get_ylim()[1] == pytest.approx(OFF_SCALE * 20.0)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["dense", "nirvana", "magnitude ↑"]
    plt.close(fig)
    in_scale = long[long["method"] != "magnitude"]  # nothing leaves: the panel fits its lines, no mark
    fig = metrics_figure(in_scale)
    assert fig.axes[0].get_ylim()[1] < 100 and fig.legends[0].get_title().get_text() == ""
    plt.close(fig)
