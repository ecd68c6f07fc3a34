"""Evidence across calibration draws (nirvana.reporting.draws, verdicts): synthetic rows and estimates whose answer
is known — a between-draw effect that item-level intervals miss, equivalence shown and not shown, Holm changing a
word, a verdict one task carries, one draw said to be one draw. No built assets."""

import math

import numpy as np
import pytest
from rows_fixture import TASKS3, N, draw_rows

from nirvana.evaluation.chance import load_floors
from nirvana.reporting import draws, verdicts
from nirvana.reporting.report import build_draw_report
from nirvana.results import append_rows, read_rows

SEEDS = (12, 13, 14, 15, 16)


def frame(tmp_path, rows):
    append_rows(tmp_path / "rows.jsonl", rows)
    return read_rows(tmp_path / "rows.jsonl")


def over_draws(shifts: dict, nll: dict | None = None, seeds=SEEDS, sparsity=0.4) -> dict:
    """NIRVANA on the base items in every draw; each baseline `shifts[name][k]` items more correct per task in
    draw k (a list over `seeds`, or one number for all); perplexity `nll[name]` (per draw list or number)."""
    spec = {}
    for k, seed in enumerate(seeds):
        spec[("nirvana", sparsity, seed, "none")] = {"nll": 5.0}
        for name, shift in shifts.items():
            per = shift[k] if isinstance(shift, list) else shift
            value = (nll or {}).get(name, 5.0)
            spec[(name, sparsity, seed, "none")] = {"shift": {t: per for t in TASKS3},
                                                    "nll": value[k] if isinstance(value, list) else value}
    return spec


def test_a_between_draw_effect_that_item_level_intervals_miss(tmp_path):
    """FLAP is 4 points above NIRVANA on draw 12, and the draws disagree (+4, −3, +5, −4, +1 points: mean +0.6).
    Each draw alone, and the item level alone, exclude 0; across draws the interval must not."""
    per_draw = [8, -6, 10, -8, 2]  # items more correct per task, of N = 200: ±4 points
    report = draws.draw_report(frame(tmp_path, draw_rows(over_draws({"flap": per_draw}))), columns=["avg"])
    (c,) = report.headline
    assert c.spread.estimate.draws == 5 and c.spread.measured
    assert c.spread.estimate.value == pytest.approx(np.mean(per_draw) / N)
    assert [round(100 * x, 1) for x in c.spread.per_draw] == [4.0, -3.0, 5.0, -4.0, 1.0]
    items_only = verdicts.Estimate(c.spread.estimate.value, math.sqrt(draws.stats.bootstrap_variance(
        {t: np.full(N, np.mean(per_draw) / N) for t in TASKS3})), math.inf)  # the draw-averaged items: no spread
    lo, hi = c.spread.estimate.interval(0.05)
    assert lo < 0 < hi and c.word(0.05) == "inconclusive"
    assert items_only.interval(0.05)[0] > 0  # the items alone claim a difference the draws do not support
    first = draws.draw_report(frame(tmp_path / "one", draw_rows(over_draws({"flap": per_draw[:1]}, seeds=(12,)))),
                              columns=["avg"])
    assert first.headline[0].word(0.05) == "better" and not first.headline[0].spread.measured  # seed 12 alone


def test_two_level_intervals_cover_at_their_level_where_item_intervals_do_not():
    """400 simulated families of 5 draws on shared items (sd 0.1), each draw shifting every item (sd 5 points)
    plus its own item noise (sd 0.05), no true difference: the two-level 95 % interval covers 0 about 95 % of the
    time, the item level alone far less."""
    rng = np.random.default_rng(0)
    covered, covered_items = 0, 0
    for _ in range(400):
        shift, base = rng.normal(0, 0.05, size=5), rng.normal(0, 0.1, size=N)
        samples = [{"t": base + rng.normal(0, 0.05, size=N) + s} for s in shift]
        spread = draws.twolevel_label(samples)
        lo, hi = spread.estimate.interval(0.05)
        covered += lo < 0 < hi
        v_items = draws.stats.bootstrap_variance({"t": np.mean([s["t"] for s in samples], axis=0)})
        half = 1.96 * math.sqrt(v_items)
        covered_items += abs(spread.estimate.value) < half
    assert 0.92 <= covered / 400 <= 0.98 and covered_items / 400 < 0.6


def test_the_closed_form_is_the_two_level_bootstraps_variance():
    """Resample the draws, then the items with the same indices in every draw: with additive draw effects its
    variance is the items' closed form plus (D − 1)/D of s²/D — `two_level` keeps s²/D (unbiased) instead."""
    rng = np.random.default_rng(1)
    base, shift = rng.normal(0, 1, size=300), np.array([0.0, 0.3, -0.2, 0.5])
    x = base[None, :] + shift[:, None]  # draws × items
    reps = []
    for _ in range(4000):
        d = rng.integers(0, 4, size=4)
        i = rng.integers(0, 300, size=300)
        reps.append(x[np.ix_(d, i)].mean())
    spread = draws.twolevel_label([{"t": row} for row in x])
    v_items = draws.stats.bootstrap_variance({"t": x.mean(axis=0)})
    v_draws = np.var(shift, ddof=1) / 4
    assert spread.estimate.se ** 2 == pytest.approx(v_items + v_draws)
    assert np.var(reps) == pytest.approx(v_items + 3 / 4 * v_draws, rel=0.1)


def test_equivalence_is_shown_inside_the_margin_and_inconclusive_when_the_interval_straddles_it():
    e = verdicts.Estimate(0.002, 0.003, df=10, draws=5)  # +0.2 points, tight: 95 % interval inside ±1.5
    lo, hi = e.interval(0.05)
    assert -0.015 < lo and hi < 0.015 and verdicts.word(lo, hi, perplexity=False) == "equivalent"
    assert e.p_equivalence(0.015) < 0.05 < e.p_difference()
    wide = verdicts.Estimate(0.002, 0.01, df=10, draws=5)  # the same difference, a wider interval: cannot say
    assert verdicts.word(*wide.interval(0.05), perplexity=False) == "inconclusive"
    assert wide.p_equivalence(0.015) > 0.05 and wide.p_difference() > 0.05
    ratio = verdicts.Estimate(math.log(1.01), 0.005)  # perplexity 1.01× [1.00, 1.02]: inside 1/1.05–1.05
    assert verdicts.word(*np.exp(ratio.interval(0.05)), perplexity=True) == "equivalent"
    # the p-values and the printed interval agree at every level: a word never contradicts its interval
    for tail in (0.2, 0.05, 0.01, 0.001):
        for est in (e, wide, verdicts.Estimate(0.02, 0.006, 4), verdicts.Estimate(-0.03, 0.01)):
            lo, hi = est.interval(tail)
            assert (lo > 0 or hi < 0) == (est.p_difference() < tail)
            assert (-0.015 < lo and hi < 0.015) == (est.p_equivalence(0.015) < tail)


def test_draws_show_equivalence_over_draws(tmp_path):
    """Taylor within ±1 item of NIRVANA on every draw and task: equivalent, by a 95 % and by the Holm interval."""
    report = draws.draw_report(frame(tmp_path, draw_rows(over_draws({"taylor": [1, 0, -1, 0, 1]}))), columns=["avg"])
    (c,) = report.headline
    assert c.word(0.05) == "equivalent" and c.word(report.tail) == "equivalent"


def test_holm_adjusts_the_family_and_its_interval_shows_exactly_holms_rejections():
    rng = np.random.default_rng(2)
    for _ in range(50):
        p = rng.uniform(0, 0.02, size=rng.integers(1, 30)) ** rng.uniform(0.5, 2)
        tail = verdicts.holm_tail(p)
        order, m, rejected = np.argsort(p), len(p), set()
        for j, i in enumerate(order):  # Holm by the book
            if p[i] > 0.05 / (m - j):
                break
            rejected.add(i)
        assert {i for i in range(m) if p[i] < tail} == rejected
    # one comparison alone: 95 %; the same estimate in a family of 27 others that show nothing: inconclusive
    e = verdicts.Estimate(0.02, 0.008)  # +2.0 [+0.4, +3.6] points: better, unadjusted
    assert verdicts.word(*e.interval(0.05), perplexity=False) == "better"
    nothing = [verdicts.Estimate(0.0, 0.02)] * 26
    tail = verdicts.holm_tail([p for x in [e, *nothing] for p in (x.p_difference(), x.p_equivalence(0.015))])
    assert tail == pytest.approx(0.05 / 54) and verdicts.word(*e.interval(tail), perplexity=False) == "inconclusive"


def test_holm_changes_a_verdict_in_the_report(tmp_path):
    """FLAP 1.8 points above NIRVANA over draws (+3.0, +1.0, +2.5, +0.5, +2.0): better unadjusted; in a family
    with two baselines that show nothing, at two metrics, the Holm interval is wider and the word inconclusive."""
    spec = over_draws({"flap": [6, 2, 5, 1, 4], "taylor": [3, -4, 6, -5, 0], "wanda_sp:matched": [2, -6, 5, -3, 1]},
                      nll={"taylor": [5.0, 5.3, 4.7, 5.2, 4.8], "wanda_sp:matched": [5.2, 4.8, 5.3, 4.7, 5.0],
                           "flap": [5.1, 4.9, 5.2, 4.8, 5.0]})
    rows = frame(tmp_path, draw_rows(spec))
    report = draws.draw_report(rows)
    flap = next(c for c in report.headline if c.method == "flap" and c.column == "avg")
    assert flap.word(verdicts.ALPHA) == "better" and flap.word(report.tail) == "inconclusive"
    assert report.tail < 0.05 / 6  # 12 hypotheses, a few rejected at most
    table = draws.verdict_table(report, report.headline, report.tail)
    line = table[(table["method"] == "flap") & (table["metric"] == "zero-shot avg")].iloc[0]
    interval = [c for c in table.columns if c.startswith("vs NIRVANA")][0]
    assert f"[{draws.level_label(report.tail)} interval]" in interval and line["word"] == "inconclusive"


def test_leave_one_task_out_flags_a_verdict_that_one_task_carries(tmp_path):
    """FLAP is 15 points above NIRVANA on sciq only, equal elsewhere: +5 points on the three-task mean, better —
    a word sciq carries alone."""
    spec = {}
    for seed in SEEDS:
        spec[("nirvana", 0.4, seed, "none")] = {"nll": 5.0}
        spec[("flap", 0.4, seed, "none")] = {"shift": {"sciq": 30}, "nll": 5.0}
    report = draws.draw_report(frame(tmp_path, draw_rows(spec)), columns=["avg"])
    (c,) = report.headline
    assert c.word(report.tail) == "better"
    loto = report.loto(c)
    assert loto["sciq"] == "equivalent" and loto["arc_easy"] == loto["piqa"] == "better"
    line = draws.verdict_table(report, report.headline, report.tail).iloc[0]
    assert line["tasks that change the word when left out"] == "sciq (equivalent)"


def test_one_draw_is_said_to_be_one_draw_and_selections_pair_with_every_draw(tmp_path):
    spec = over_draws({"flap": 4}, seeds=(12,))
    spec[("nirvana:kl", 0.4, 14, "kl")] = {"shift": {"arc_easy": 10}, "nll": 4.5}
    out = build_draw_report([str(p) for p in [_write(tmp_path, draw_rows(spec))]], tmp_path / "out",
                            also=["nirvana:kl"], command="make reproduce-draws")
    assert {p.name for p in out} == {"draws.md", "draws_verdict.md", "draws_tasks.md", "draws.csv"}
    verdict = (tmp_path / "out" / "draws_verdict.md").read_text()
    assert "**One calibration draw only**" in verdict and "**unmeasured**" in verdict and "better ‡" in verdict
    assert "Secondary, unadjusted" in verdict and "nirvana:kl" in verdict and "tie" not in verdict
    # a selection against NIRVANA over five draws: paired with each of them
    spec5 = over_draws({"flap": 4})
    spec5[("nirvana:kl", 0.4, 14, "kl")] = {"shift": {"arc_easy": 10}, "nll": 4.5}
    report = draws.draw_report(frame(tmp_path / "five", draw_rows(spec5)), also=["nirvana:kl"])
    kl = next(c for c in report.secondary if c.column == "avg")
    assert kl.spread.estimate.draws == 5 and kl.spread.estimate.value == pytest.approx(10 / N / 3)
    assert report.cells[("nirvana:kl", 0.4)].selected and "selected: 14" in draws.method_table(report).to_string()


def _write(tmp_path, rows):
    tmp_path.mkdir(parents=True, exist_ok=True)
    append_rows(tmp_path / "rows.jsonl", rows)
    return tmp_path / "rows.jsonl"


def test_the_single_draw_report_points_rows_of_several_draws_to_the_draw_aware_one(tmp_path):
    from nirvana.reporting import pairing

    with pytest.warns(UserWarning, match=r"several calibration draws: `experiments.report --draws`"):
        pairing.cells(frame(tmp_path, draw_rows(over_draws({"flap": 4}))))


def test_comparisons_pair_the_same_draws_only(tmp_path):
    spec = over_draws({"flap": [4, 4, 4, 4, 4]})
    del spec[("flap", 0.4, 13, "none")]  # FLAP's draw 13 not run yet: NIRVANA's draw 13 is left out of the pair
    report = draws.draw_report(frame(tmp_path, draw_rows(spec)), columns=["avg"])
    assert report.headline[0].spread.estimate.draws == 4
    assert draws.pairs(report.cells[("flap", 0.4)], report.cells[("nirvana (γ=3.36)", 0.4)]) == \
        [(12, 12), (14, 14), (15, 15), (16, 16)]


def test_the_chance_normalised_mean_leaves_out_tasks_the_dense_model_does_not_beat(tmp_path):
    spec = over_draws({"flap": 4})
    report = draws.draw_report(frame(tmp_path, draw_rows(spec, dense={"arc_easy": 0.6, "piqa": 0.48, "sciq": 0.8})))
    assert [t for t, *_ in report.normalised.scale] == ["arc_easy", "sciq"]  # piqa's dense 48 % < chance 50 %
    assert report.left_out == ["piqa (dense 48.0 % vs chance 50.0 %)"]
    c = next(c for c in report.headline if c.column == "avg")
    spread, _ = report.normalised_word(c)
    floors = load_floors(500)
    expected = np.mean([4 / N / (0.6 - floors["arc_easy"]["chance"]), 4 / N / (0.8 - 0.25)])
    assert spread.estimate.value == pytest.approx(expected)


def test_perplexity_over_draws_is_a_geometric_mean_and_ratios_pair_by_draw(tmp_path):
    spec = over_draws({"flap": 0}, nll={"flap": [4.0, 4.2, 3.8, 4.1, 3.9]})
    report = draws.draw_report(frame(tmp_path, draw_rows(spec)), columns=["wiki_passages@512"])
    (c,) = report.headline
    assert math.exp(c.spread.estimate.value) == pytest.approx(math.exp(4.0 - 5.0))
    assert draws.spread_range(c.spread, True) == pytest.approx((math.exp(-1.2), math.exp(-0.8)))
    assert c.word(report.tail) == "better"


def test_the_readme_answer_quotes_the_committed_verdict_file_word_for_word():
    """The README's answer table (between its answer markers) is read from draws_verdict.md: every cell's interval and
    word must be the verdict file's, so a regenerated report cannot leave a stale verdict on the front page."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    verdict = {}
    for line in (root / "results/tables/smollm2_135m_draws/draws_verdict.md").read_text().splitlines():
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) >= 6 and c[2] in ("zero-shot avg", "ppl lambada_head@512", "ppl wiki_passages@512"):
            verdict.setdefault((c[0], c[1]), []).append(f"{re.sub(r' [(].*[)]$', '', c[4])} {c[5]}")
    readme = (root / "README.md").read_text()
    answer = readme[readme.index("<!-- answer -->"):readme.index("<!-- /answer -->")]
    names = {"FLAP": "flap", "Taylor": "taylor", "Wanda-sp (matched)": "wanda_sp:matched"}
    quoted = {}
    for line in answer.splitlines():
        m = re.match(r"\| (FLAP|Taylor|Wanda-sp \(matched\)) (\d+) %[^|]*\|(.*)\|$", line)
        if m:
            cells = [x.strip().replace("−", "-") for x in m.group(3).split("|")]
            quoted[(names[m.group(1)], f"{int(m.group(2)) / 100:g}")] = cells
    assert len(quoted) == 9 and quoted == {k: v for k, v in verdict.items() if k in quoted}
