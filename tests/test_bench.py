"""`make bench` machinery on small shapes: memory probe, isolated workers, summaries, the CLI, the GPU check."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from nirvana.bench.memory import PeakMemory
from nirvana.bench.scoring import summarize
from nirvana.paths import REPO_ROOT

CONF = Path(__file__).resolve().parents[1] / "conf"
linux_only = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


@linux_only
def test_peak_memory_is_scoped_to_its_region():
    with PeakMemory("cpu") as big:
        x = torch.ones(64 * 2**20)  # 256 MiB, touched
        del x
    with PeakMemory("cpu") as small:
        y = torch.ones(2**20)  # 4 MiB
        del y
    assert big.how.startswith("VmHWM")
    assert big.extra_bytes > 200 * 2**20
    assert small.extra_bytes < 100 * 2**20  # the first region's peak was reset, not inherited


def test_isolated_workers_agree_on_the_plan():
    from nirvana.bench.isolate import run_isolated

    out = {v: run_isolated("scoring", model="llama-tiny-shape", variant=v, batch=4, seq_len=16)
           for v in ("naive", "ours+micro_batch", "auto")}
    assert out["naive"]["plan_digest"] == out["ours+micro_batch"]["plan_digest"] == out["auto"]["plan_digest"]
    assert all(r["peak_bytes"] > r["base_bytes"] > 0 and r["seconds"] > 0 for r in out.values())
    # every variant but naive carries the estimate for the schedule it ran
    assert "predicted_extra_bytes" not in out["naive"]
    assert out["ours+micro_batch"]["schedule"] == {"micro_batch_size": 1, "checkpointing": False}
    assert all(out[v]["predicted_extra_bytes"] > 0 for v in ("ours+micro_batch", "auto"))
    with pytest.raises(RuntimeError, match="unknown scoring variant"):
        run_isolated("scoring", model="llama-tiny-shape", variant="nope", batch=4, seq_len=16)


def _m(variant, seconds, peak, digest="d", model="m"):
    return {"model": model, "variant": variant, "batch": 2, "seq_len": 8, "seconds": seconds, "peak_bytes": peak,
            "extra_bytes": peak // 2, "plan_digest": digest, "pruned_groups": 1, "pruned_neurons": 2, "oom": False}


def test_summary_takes_medians_and_ratios_to_naive():
    g = 2**30
    rows = summarize([_m("naive", 10, 10 * g), _m("naive", 12, 10 * g), _m("naive", 50, 10 * g),
                      _m("ours", 6, 4 * g), _m("ours", 9, 4 * g), _m("ours", 3, 5 * g, digest="x")])
    naive, ours = rows
    assert naive["seconds_median"] == 12 and naive["time_ratio"] == 1.0
    assert ours["seconds_median"] == 6 and ours["time_ratio"] == pytest.approx(0.5)
    assert ours["peak_ratio"] == pytest.approx(0.4)
    assert ours["plan_identical"] is False  # one repeat disagreed: reported, not hidden


def test_summary_compares_the_estimate_with_the_measured_peak_and_judges_auto():
    from nirvana.bench.sections import scoring_goal

    g = 2**30
    naive = _m("naive", 10, 10 * g)
    auto = [{**_m("auto", 9, 4 * g), "base_bytes": g, "predicted_extra_bytes": int(3.6 * g),
             "schedule": {"micro_batch_size": 8, "checkpointing": False}} for _ in range(3)]
    rows = summarize([naive, *auto])
    row = rows[1]
    assert row["predicted_peak_gib"] == pytest.approx(4.6) and row["prediction_error"] == pytest.approx(0.15)
    assert row["schedule"]["micro_batch_size"] == 8
    goal = scoring_goal({"summary": rows})["auto"]["met"]["m"]
    assert goal == {"peak_and_time": True, "prediction": True}
    worse = summarize([naive, *[{**a, "predicted_extra_bytes": 5 * g} for a in auto]])  # predicts 6 GiB for 4
    assert scoring_goal({"summary": worse})["auto"]["met"]["m"]["prediction"] is False


@pytest.mark.slow  # validation checks the benchmark data is built
def test_bench_config_composes():
    from nirvana.bench.config import BenchConfig
    from nirvana.bench.sections import validate
    from nirvana.config import typed

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = typed(compose(config_name="bench"))
    assert isinstance(cfg, BenchConfig)
    validate(cfg)
    assert cfg.sections == ["scoring", "statistics", "kl", "kl_fitness", "speed", "llamacpp", "quant", "zeroshot",
                            "exactness", "demo"]


@pytest.mark.parametrize("override, message", [
    ("sections=[scoring,nope]", "unknown bench section"),
    ("scoring.repeats=0", "scoring.repeats must be ≥ 1"),
    ("scoring.models=[{name: nope, batch: 4, seq_len: 16}]", "unknown benchmark model"),
    ("speed.sparsities=[1.0]", "speed.sparsities"),
    ("llamacpp.types=[q9]", "q9"),
    ("quant.schemes=[int3]", "int3"),
])
def test_a_bad_bench_value_fails_before_anything_runs(override, message):
    from nirvana.config import typed

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="bench", overrides=[override])
    with pytest.raises(Exception, match=message):
        typed(cfg)


def test_an_unknown_bench_key_fails_at_composition():
    from omegaconf.errors import ConfigKeyError

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"), pytest.raises(Exception) as caught:
        compose(config_name="bench", overrides=["speed.repeat=3"])
    assert "repeat" in str(caught.value) or isinstance(caught.value, ConfigKeyError)


def test_a_missing_llamacpp_runtime_is_named_before_any_section_runs(monkeypatch):
    from nirvana.bench.config import BenchConfig
    from nirvana.bench.sections import check_environment
    from nirvana.deploy import runtime

    monkeypatch.setattr(runtime, "available", lambda: False)
    with pytest.raises(RuntimeError, match="make setup-llamacpp"):
        check_environment(BenchConfig(sections=["speed", "llamacpp"]))
    check_environment(BenchConfig(sections=["speed"]))  # without the section nothing is required


def _shrunk(tmp_path, *extra):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="bench", overrides=[
            f"out_dir={tmp_path}", "progress=false", "sections=[scoring,speed]",
            "scoring.models=[{name: llama-tiny-shape, batch: 4, seq_len: 16}]", "scoring.variants=[naive,ours]",
            "scoring.repeats=1", "speed.model=tiny:llama", "speed.repeats=1", "speed.sparsities=[0.5]",
            "speed.calibration={source: pydoc, n_samples: 4, seq_len: 32, seed: 0}",
            "speed.shapes=[{batch_size: 1, prompt_len: 8, new_tokens: 2}]", f"speed.score_cache={tmp_path}/cache",
            *extra])


def test_bench_cli_shrunk_writes_sections_and_summary(tmp_path):
    from experiments.bench import run_bench

    summary = run_bench(_shrunk(tmp_path))
    scoring = json.loads((tmp_path / "scoring.json").read_text())
    assert scoring["provenance"]["git"] and scoring["goal"]["peak_ratio"] == 0.6
    ours = next(r for r in scoring["result"]["summary"] if r["variant"] == "ours")
    assert ours["plan_identical"] is True
    assert scoring["result"]["score_differences"]["llama-tiny-shape/ours"] < 1e-4
    speed = json.loads((tmp_path / "speed.json").read_text())["result"]["rows"]
    assert speed[0]["prefill_flop_ratio"] < 1 and speed[0]["params_kept"] < 1
    text = summary.read_text()
    assert "## Scoring" in text and "## Inference speed" in text and "llama-tiny-shape" in text
    assert (tmp_path / "scoring.png").stat().st_size > 0


@pytest.mark.parametrize("override,match", [
    ("sections=[scoring,nope]", "unknown bench section"),
    ("scoring.variants=[naive,fast]", "unknown scoring variant"),
    ("scoring.models=[{name: gpt5, batch: 1, seq_len: 8}]", "unknown benchmark model"),
    ("sections=[scoring,quant]|quant.schemes=[int8_wo,fp3]", "unknown quantization scheme"),
    ("sections=[scoring,quant]|quant.repeats=0", "quant.repeats"),
])
def test_bench_rejects_bad_config_before_work(tmp_path, override, match):
    from experiments.bench import run_bench

    with pytest.raises(ValueError, match=match):
        run_bench(_shrunk(tmp_path, *override.split("|")))
    assert not list(tmp_path.glob("*.json"))


def test_summary_renders_every_section_kind(tmp_path):
    from nirvana.bench.summary import write_summary

    prov = {"git": "abc", "finished": "now", "machine": "m", "command": "c"}
    (tmp_path / "demo.json").write_text(json.dumps({"result": {"seconds": 900.0, "stages": {"sweep": 880.0,
                                        "report": 20.0}, "rows": 40, "args": [], "command": "x"}, "provenance": prov}))
    (tmp_path / "zeroshot.json").write_text(json.dumps({"result": {
        "tasks": ["arc_easy"], "limit": 2, "batch_size": 8, "requests": 8,
        "medians": {"hf": {"seconds": 5.0, "loglikelihood_seconds": 2.5},
                    "hf-shared-prefix": {"seconds": 4.0, "loglikelihood_seconds": 1.0}},
        "requests_per_s": {"hf": 3.2, "hf-shared-prefix": 8.0}, "ratio_loglikelihood": 2.5, "ratio_end_to_end": 1.25,
        "same_scores": True, "max_abs_loglikelihood_difference": 3e-5}, "provenance": prov}))
    (tmp_path / "statistics.json").write_text(json.dumps({"result": {"summary": [
        {"method": "wanda_sp", "layerwise_seconds": 20.0, "forward_seconds": 140.0, "speedup": 7.0,
         "plans_identical": True}]}, "provenance": prov}))
    (tmp_path / "exactness.json").write_text(json.dumps({"result": {
        "tasks": ["piqa"], "limit": 2, "pruned_sparsity": 0.3, "models": {"pruned": {
            "items": 2, "requests": 4, "max_abs_loglikelihood_difference": 3e-4, "same_metrics": False,
            "tolerance": 1e-4, "flips": [{"task": "piqa", "doc": 7, "hf": [-1.0, -1.00001],
                                          "hf-shared-prefix": [-1.00001, -1.0]}],
            "over_tolerance": [{"task": "piqa", "doc": 3, "choice": 1, "difference": 3e-4, "hf": -50.0003,
                                "hf-shared-prefix": -50.0, "loglikelihood": -50.00001, "continuation_tokens": 30,
                                "context_tokens": 9, "hf_error": 2.9e-4, "hf-shared-prefix_error": 1e-5}]}}},
        "provenance": prov}))
    text = write_summary(tmp_path).read_text()
    assert "15.0 min" in text and "2.50×" in text and "git abc" in text and "7.00×" in text
    assert "pruned piqa item 7" in text and "**no**" in text and "1 (> 1e-04)" in text
    assert "pruned piqa item 3 choice 1 (30 continuation tokens)" in text and "|ours − float64| 1.0e-05" in text


@pytest.mark.skipif(not (REPO_ROOT / ".git").exists(), reason="needs the project's git history")
def test_summary_names_the_commit_whose_code_a_dirty_measurement_ran():
    """A measurement on a copy with stale git metadata records "<old>-dirty" and the code's tree id: the summary
    names the commit with that code; an unknown tree is left as recorded."""
    from nirvana.bench.summary import _provenance
    from nirvana.provenance import _code_trees

    tree, commit = next(iter(_code_trees(str(REPO_ROOT)).items()))
    doc = {"provenance": {"git": "abc-dirty", "versions": {"code_tree": tree}}}
    assert f"git abc-dirty (code identical to {commit})" in _provenance(doc)
    doc["provenance"]["versions"]["code_tree"] = "0" * 40
    assert "git abc-dirty on" in _provenance(doc)


def test_item_comparison_finds_flips_and_the_worst_difference():
    from nirvana.bench.zeroshot import compare_items

    stock = {"piqa": {"0": {"ll": [-1.0, -2.0], "metric": 1.0}, "1": {"ll": [-3.0, -3.00001], "metric": 1.0}}}
    ours = {"piqa": {"0": {"ll": [-1.0, -2.00003], "metric": 1.0}, "1": {"ll": [-3.00002, -3.0], "metric": 0.0}}}
    r = compare_items(stock, ours)
    assert r["items"] == 2 and r["max_abs_loglikelihood_difference"] == pytest.approx(3e-5)
    assert [(f["task"], f["doc"]) for f in r["flips"]] == [("piqa", 1)] and r["over_tolerance"] == []
    r = compare_items(stock, ours, tolerance=1.5e-5)
    assert r["requests"] == 4 and [(o["doc"], o["choice"]) for o in r["over_tolerance"]] == [(0, 1), (1, 0)]
    with pytest.raises(ValueError):  # a different number of choices is a bug, not a difference
        compare_items(stock, {"piqa": {**ours["piqa"], "0": {"ll": [-1.0], "metric": 1.0}}})


def test_gpu_check_runs_on_cpu_with_a_small_shape(tmp_path):
    from experiments.gpu_check import main
    from nirvana.bench.gpu_check import shape_budget
    from nirvana.bench.summary import write_summary

    # docs/method.md §2's worked numbers, from the config alone
    assert shape_budget("llama-8b-shape", 0.5, 3.36) == {"groups": 44, "neurons": 265_197}
    assert shape_budget("llama-8b-shape", 0.2, 3.36) == {"groups": 17, "neurons": 106_078}
    assert shape_budget("llama-8b-shape", 0.5, 1.0) == {"groups": 128, "neurons": 229_376}
    out = tmp_path / "gpu_check.json"
    code = main(["--shape", "llama-tiny-shape", "--device", "cpu", "--dtype", "float32", "--batch", "4",
                 "--seq-len", "16", "--speed-repeats", "1", "--zeroshot-docs", "2", "--out", str(out)])
    doc = json.loads(out.read_text())["result"]
    assert code == 0 and doc["checks"]["parameters_consistent"] and doc["checks"]["adapter_budget_agrees"]
    assert doc["plan_identical_to_naive"] is True
    assert [r["variant"] for r in doc["scoring"]] == ["ours+checkpointing", "ours", "naive", "naive (no cap)"]
    assert all(s["prefill_flop_ratio"] < 1 for s in doc["speed"])
    quant = doc["quantization"]  # every scheme on the pruned model; on CPU torchao runs them all
    assert [q["scheme"] for q in quant] == ["int8_wo", "w8a8", "w8a8_smoothquant-a0.5", "int4_wo-g128"]
    assert all("error" not in q and q["size_ratio"] < 1 and q["decode_tok_s"] > 0 for q in quant), quant
    zs = doc["zeroshot"]  # the two lm-eval classes on the same 22 requests, fp32: the same answers
    assert zs["requests"] == 22 and zs["max_abs_loglikelihood_difference"] < 1e-4 and zs["same_greedy"] is True
    assert "reference" not in zs  # float32 is its own reference
    summary = write_summary(tmp_path).read_text()
    assert "## GPU check" in summary and "| int4_wo-g128" in summary and "| ours+checkpointing" in summary


def test_gpu_check_refuses_cuda_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from experiments.gpu_check import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])


@pytest.mark.gpu
def test_gpu_check_on_the_gpu(tmp_path):
    """The real check (Llama-3.1-8B shape, bf16, 24 GiB cap); `pytest -m gpu` on a CUDA machine."""
    from experiments.gpu_check import main

    out = tmp_path / "gpu_check.json"
    assert main(["--out", str(out)]) == 0
    doc = json.loads(out.read_text())["result"]
    assert doc["checks"]["closed_form_matches_reference"] is True
    assert doc["checks"]["scored_under_cap"] is True


@pytest.mark.slow
def test_zeroshot_bench_compares_the_two_model_classes(tmp_path):
    from nirvana import paths
    from nirvana.bench.zeroshot import run_zeroshot_bench

    r = run_zeroshot_bench(str(paths.smollm2_dir()), ["arc_easy", "winogrande"], 3, 8, 2048, 1, str(tmp_path))
    assert r["requests"] == 3 * 4 + 3 * 2  # 3 questions × 4 choices, 3 sentences × 2 options
    assert r["same_scores"] is True and r["max_abs_loglikelihood_difference"] < 1e-4
    assert r["requests_per_s"]["hf"] > 0 and r["requests_per_s"]["hf-shared-prefix"] > 0


@pytest.mark.slow
def test_the_float64_referee_rescores_real_requests_in_a_fresh_process():
    """The exactness bench's referee on SmolLM2 (its own process, as the bench runs it): fed two real requests
    with made-up fp32 values, it returns each request's float64 log-likelihood and both distances to it."""
    from nirvana import paths
    from nirvana.bench.zeroshot import arbitrate

    pairs = [["Question: Which gas do plants absorb?\nAnswer:", " carbon dioxide"], ["The cat sat on the", " mat"]]
    over = [{"task": "t", "doc": i, "choice": 0, "difference": 1.0, "hf": -1.0, "hf-shared-prefix": -2.0, "args": p}
            for i, p in enumerate(pairs)]
    out = arbitrate(over, str(paths.smollm2_dir()), 2048)
    assert [o["doc"] for o in out] == [0, 1] and all("args" not in o for o in out)
    for o in out:
        assert o["continuation_tokens"] >= 1 and o["loglikelihood"] < 0
        assert o["hf_error"] == pytest.approx(abs(-1.0 - o["loglikelihood"]))
        assert o["hf-shared-prefix_error"] == pytest.approx(abs(-2.0 - o["loglikelihood"]))


def test_quant_section_on_a_tiny_pruned_model(tmp_path):
    """Every scheme on a dense and a pruned copy: sizes shrink, speeds are measured against the float model."""
    from experiments.bench import run_bench

    summary = run_bench(_shrunk(tmp_path, "sections=[quant]", "quant.model=tiny:llama", "quant.repeats=1",
                                "quant.sparsities=[0.0,0.5]", "quant.calibration={source: pydoc, n_samples: 4, "
                                "seq_len: 32, seed: 0}", "quant.shapes=[{batch_size: 1, prompt_len: 8, new_tokens: 2}]",
                                f"quant.score_cache={tmp_path}/cache"))
    rows = json.loads((tmp_path / "quant.json").read_text())["result"]["rows"]
    assert [(r["sparsity"], r["scheme"]) for r in rows] == [
        (s, q) for s in (0.0, 0.5) for q in ("int8_wo", "w8a8", "w8a8_smoothquant-a0.5", "int4_wo-g128")]
    for r in rows:
        assert r["quant_bytes"] < r["float_bytes"] and r["quant_file_bytes"] < r["float_file_bytes"]
        assert r["prefill_tok_s"] > 0 and r["float_decode_tok_s"] > 0 and r["layers"] > 0
    pruned = [r for r in rows if r["sparsity"] == 0.5]
    assert pruned[0]["float_bytes"] < rows[0]["float_bytes"]  # the pruned copy really is smaller
    assert "## Quantization" in summary.read_text()


def test_units_differing_counts_each_swapped_unit_once():
    from nirvana.bench.scoring import units_differing

    a = [[[0, 1], [0, 1, 2, 3]], [[1], [4, 5]]]
    assert units_differing(a, a) == 0
    b = [[[0, 1], [0, 1, 2, 7]], [[0], [4, 5]]]  # one neuron and one group swapped
    assert units_differing(a, b) == 2


def test_reference_rescoring_arbitrates_a_low_precision_model(tmp_path):
    """bf16 variants are compared unit by unit with the same weights upcast to float32 and re-scored."""
    from nirvana.bench.scoring import run_scoring_bench

    out = run_scoring_bench({"llama-tiny-shape": {"batch": 2, "seq_len": 16, "dtype": "bfloat16",
                                                  "reference_dtype": "float32"}},
                            ["naive", "auto"], repeats=1, scores_dir=str(tmp_path))
    ref = [m for m in out["measurements"] if m["variant"] == "reference"]
    assert len(ref) == 1 and ref[0]["dtype"] == "float32"
    assert {m["dtype"] for m in out["measurements"] if m["variant"] != "reference"} == {"bfloat16"}
    judged = out["against_reference"]
    assert set(judged) == {"llama-tiny-shape/naive", "llama-tiny-shape/auto"}
    tiny = 4 * (2 + 448)  # 4 layers × (2 KV groups + 448 neurons)
    for v in judged.values():
        assert v["units"] == tiny and 0 <= v["units_differing"] < tiny // 10
        assert 0 < v["median_rel_score_diff"] < 0.05  # bf16 rounding: not zero, not garbage
    from nirvana.bench.summary import scoring_md

    text = "\n".join(scoring_md({"result": out}))
    import re

    assert "Against the `reference` re-scoring" in text and re.search(rf"\| +\d+ of {tiny} +\|", text)
    assert re.search(r"\| +auto +\| +float32 +\|", text)
    assert re.search(r"\| +llama-tiny-shape +\| +2×16 bfloat16 +\|", text)  # the shape column keeps the bf16 label


def test_reference_variant_needs_its_dtype():
    from nirvana.bench.isolate import run_isolated

    with pytest.raises(RuntimeError, match="reference_dtype"):
        run_isolated("scoring", model="llama-tiny-shape", variant="reference", batch=2, seq_len=8)


def test_kl_bench_times_cut_copies_against_masks_on_the_same_plans(tmp_path):
    from experiments.bench import run_bench

    run_bench(_shrunk(tmp_path, "sections=[kl]", "kl.model=tiny:llama", "kl.sparsities=[0.4]", "kl.repeats=1",
                      "kl.probe={n_samples: 4, seq_len: 16, documents: 20}",
                      "kl.calibration={source: pydoc, n_samples: 4, seq_len: 32, seed: 0}",
                      f"kl.score_cache={tmp_path}/cache"))
    result = json.loads((tmp_path / "kl.json").read_text())["result"]
    (row,) = result["summary"]
    assert row["plans"] == len(result["runs"][0]["gammas"]) > 1 and row["probe_tokens"] == 4 * 16
    assert row["same_choice"] and row["max_abs_kl_difference"] < 1e-4 and row["speedup"] > 0
    assert "## KL selection" in (tmp_path / "SUMMARY.md").read_text()


def test_kl_fitness_bench_times_the_old_choice_against_the_new_one_and_both_agree(tmp_path):
    from experiments.bench import run_bench

    run_bench(_shrunk(tmp_path, "sections=[kl_fitness]", "kl_fitness.model=tiny:llama", "kl_fitness.sparsities=[0.4]",
                      "kl_fitness.repeats=1", "kl_fitness.draws=2",
                      "kl_fitness.probe={n_samples: 8, seq_len: 16, documents: 20, batch_size: 4}",
                      "kl_fitness.calibration={source: pydoc, n_samples: 4, seq_len: 32, seed: 0}",
                      f"kl_fitness.score_cache={tmp_path}/cache"))
    result = json.loads((tmp_path / "kl_fitness.json").read_text())["result"]
    (row,) = result["summary"]
    old, new = (next(r for r in result["runs"] if r["path"] == p) for p in ("old", "new"))
    assert row["draws"] == 2 and row["gammas"] == len(old["gammas"]) > 1 and row["probe_tokens"] == 8 * 16
    assert row["same_choice"] and row["same_kl"] and row["speedup"] > 0
    # the old path rates every γ of every draw with the dense outputs recomputed per draw; the new one computes
    # them once and rates no more plans than the grid
    assert old["plans_rated"] == 2 * len(old["gammas"]) and old["dense_batch_forwards"] == 2 * 2
    assert new["dense_batch_forwards"] == 2 and new["plans_rated"] <= old["plans_rated"]
    for o, n in zip(old["kls"], new["kls"], strict=True):  # what both rated, bit for bit
        assert all(b is None or a == b for a, b in zip(o, n, strict=True))
    assert "## KL fitness" in (tmp_path / "SUMMARY.md").read_text()


def test_the_zeroshot_step_alone_measures_each_class_against_float32_in_bf16(tmp_path):
    from experiments.gpu_check import main
    from nirvana.bench.summary import write_summary

    out = tmp_path / "gpu_zeroshot.json"
    code = main(["--only", "zeroshot", "--shape", "llama-tiny-shape", "--device", "cpu", "--dtype", "bfloat16",
                 "--speed-repeats", "1", "--zeroshot-docs", "2", "--out", str(out)])
    zs = json.loads(out.read_text())["result"]["zeroshot"]
    assert code == 0 and zs["requests"] == 22 and zs["reference"]["dtype"] == "float32"
    assert "| hf-shared-prefix" in write_summary(tmp_path).read_text()
    for name in ("hf", "hf-shared-prefix"):
        gap = zs["reference"][name]
        assert 0 <= gap["mean_abs"] <= gap["max_abs"] < 10 and 0 <= gap["same_greedy"] <= 1
        assert zs["reference"][f"{name}, softmax float32"]["max_abs"] < min(0.05, gap["max_abs"])  # the protocol's


def test_the_float32_reference_gives_the_model_back_exactly_as_it_was():
    from nirvana.bench.models import random_llama
    from nirvana.bench.zeroshot import backend_speed
    from nirvana.tiny import tiny_tokenizer

    model = random_llama("llama-tiny-shape", "cpu", torch.bfloat16)
    before = {k: (v.dtype, v.clone()) for k, v in model.state_dict().items()}
    buffers = {n: b.dtype for n, b in model.named_buffers()}
    r = backend_speed(model, tiny_tokenizer(512), 1, 8, 2048, 1, reference_dtype=torch.float32)
    after = model.state_dict()
    assert all(after[k].dtype == d and torch.equal(after[k], v) for k, (d, v) in before.items())
    assert {n: b.dtype for n, b in model.named_buffers()} == buffers and "reference" in r
    same = backend_speed(model.float(), tiny_tokenizer(512), 1, 8, 2048, 1, reference_dtype=torch.float32)
    assert "reference" not in same  # a float32 model is its own reference
