"""results/bench/SUMMARY.md (and scoring.png) from the sections' JSON files — never from live measurements."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from ..provenance import describe, verified_commit

SECTIONS = ("scoring", "statistics", "kl", "kl_fitness", "speed", "llamacpp", "quant", "zeroshot", "exactness", "demo",
            "gpu_check", "gpu_zeroshot")


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def provenance(command: str, started: str | None = None) -> dict:
    """What every benchmark JSON records about where and how it was measured (rendered by `_provenance`)."""
    import platform

    import torch

    from ..results import versions

    # versions() is computed once per process: the commit as the benchmark started, before any of its own
    # results files changed the tree
    return {"git": versions()["git_hash"], "versions": versions(), "started": started, "finished": utc_now(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads"
                       + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
            "command": command}


def load_sections(out_dir: Path) -> dict[str, dict]:
    found = {}
    for name in SECTIONS:
        path = Path(out_dir) / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text())
    return found


def _provenance(doc: dict) -> str:
    p = doc.get("provenance", {})
    git = p.get("git", "?")  # a dirty hash whose recorded code is a commit's (stale git metadata) names that commit
    git = describe(git, verified_commit(git, [(p.get("versions") or {}).get("code_tree")]))
    return (f"_Measured {p.get('finished', '?')} at git {git} on {p.get('machine', '?')}; "
            f"command: `{p.get('command', '?')}`._")


def _fmt(x, spec=".2f", none="—"):
    return none if x is None else format(x, spec)


def _table(lines: list[dict]) -> list[str]:
    """A markdown table through the project's one renderer (nirvana.reporting.tables.markdown)."""
    import pandas as pd

    from ..reporting.tables import markdown

    return markdown(pd.DataFrame(lines)).rstrip("\n").splitlines()


def scoring_md(doc: dict) -> list[str]:
    r = doc["result"]
    lines = ["## Scoring: peak memory and time, ours vs the naive full-gradient scorer", "",
             "Same criterion in every variant (plans at s=0.5, γ=3.36 compared with the naive one's). Peak = "
             "resident memory of a fresh process during scoring, model included; *extra* = peak minus what was "
             "resident before scoring. Medians of the repeats; ratios are to the naive scorer on the same model.", ""]
    shapes = {m["model"]: f'{m["batch"]}×{m["seq_len"]}' + ("" if m["dtype"] == "float32" else f' {m["dtype"]}')
              for m in r["measurements"] if m["variant"] != "reference"}
    table = []
    for row in r["summary"]:
        line = {"model": row["model"], "batch": shapes.get(row["model"], ""), "variant": row["variant"]}
        if "seconds_median" not in row:
            table.append(line | {"time s": f'OOM ({row["oom"]}×)'})
            continue
        diff = r.get("score_differences", {}).get(f'{row["model"]}/{row["variant"]}')
        same = row.get("plan_identical")
        table.append(line | {"time s": f'{row["seconds_median"]:.1f}', "× naive": _fmt(row.get("time_ratio")),
                             "peak GiB": f'{row["peak_gib_median"]:.2f}', "peak × naive": _fmt(row.get("peak_ratio")),
                             "extra GiB": f'{row["extra_gib_median"]:.2f}',
                             "plan = naive": "—" if same is None else ("yes" if same else "**no**"),
                             "max rel. score diff": "—" if diff is None else f"{diff:.1e}",
                             "schedule": _schedule(row.get("schedule")),
                             "predicted peak GiB": _fmt(row.get("predicted_peak_gib")),
                             "prediction error": "—" if "prediction_error" not in row
                             else f'{row["prediction_error"]:+.0%}'})
    lines += _table(table)
    arbiter = r.get("against_reference") or {}
    if arbiter:
        dtypes = {m["model"]: m["dtype"] for m in r["measurements"] if m["variant"] == "reference"}
        lines += ["", "Against the `reference` re-scoring (the same weights upcast, one pass + checkpointing): plans "
                  "at s=0.5, γ=3.36 compared unit by unit. Where lower-precision variants disagree with each other, "
                  "this says whether the schedule or the rounding is to blame.", ""]
        lines += _table([{"model": key.split("/")[0], "variant": key.split("/")[1],
                          "reference dtype": dtypes.get(key.split("/")[0], "—"),
                          "units differing": f'{v["units_differing"]} of {v["units"]}',
                          "median rel. score diff": f'{v["median_rel_score_diff"]:.1e}',
                          "max rel. score diff": f'{v["max_rel_score_diff"]:.1e}'} for key, v in arbiter.items()])
    goal = doc.get("goal", {})
    if goal:
        lines += ["", f'Goal: peak ≤ {goal["peak_ratio"]}× at time ≤ {goal["time_ratio"]}× of the naive scorer. '
                  + "; ".join(f'{m}: {", ".join(v) if v else "no variant meets it"}'
                              for m, v in goal.get("met_by", {}).items()) + "."]
    auto = goal.get("auto")
    if auto:
        verdict = {True: "met", False: "**not met**", None: "not measured"}
        lines += ["", f'Automatic schedule (`auto`, the default): peak ≤ {auto["peak_ratio"]}× at time ≤ '
                  f'{auto["time_ratio"]}× of the naive scorer, and predicted peak within ±{auto["prediction"]:.0%} of '
                  "the measured one for every variant it predicts. "
                  + "; ".join(f'{m}: peak/time {verdict[v["peak_and_time"]]}, prediction {verdict[v["prediction"]]}'
                              for m, v in auto.get("met", {}).items()) + "."]
    return lines


def _schedule(s: dict | None) -> str:
    if not s:
        return "—"
    parts = [f'micro {s["micro_batch_size"]}' if s["micro_batch_size"] else "one pass"]
    return " + ".join(parts + (["checkpointing"] if s["checkpointing"] else []))


def speed_md(doc: dict) -> list[str]:
    r = doc["result"]
    lines = ["## Inference speed: NIRVANA-pruned vs dense", "",
             f'{r["model"]}, {r["threads"]} threads. Efficiency = measured speed-up × FLOP ratio (1.0 = the ideal '
             "speed-up 1/FLOP ratio). Medians of alternating repeats.", ""]
    table = [{"sparsity": row["sparsity"], "batch × prompt + new": f'{row["batch_size"]} × {row["prompt_len"]} + '
              f'{row["new_tokens"]}', "params kept": f'{row["params_kept"]:.3f}', "stage": stage,
              "FLOP ratio": f'{row[f"{stage}_flop_ratio"]:.3f}', "dense tok/s": f'{row[f"dense_{stage}_tok_s"]:.1f}',
              "pruned tok/s": f'{row[f"{stage}_tok_s"]:.1f}', "speed-up": f'{row[f"{stage}_speedup"]:.2f}×',
              "efficiency": f'{row[f"{stage}_efficiency"]:.2f}'}
             for row in r["rows"] for stage in ("prefill", "decode")]
    return lines + _table(table)


def llamacpp_md(doc: dict, transformers: dict | None = None) -> list[str]:
    """The llama.cpp section; `transformers`: the speed section's document, whose dense/pruned decode numbers at
    batch 1 are quoted next to llama.cpp's when present."""
    r = doc["result"]
    lines = ["## Inference speed in llama.cpp: NIRVANA-pruned vs dense GGUFs", "",
             f'{r["model"]}, llama-cpp-python {r["llama_cpp_version"]}, {r["settings"]}; batch 1. Efficiency = measured '
             "speed-up × FLOP ratio (1.0 = the ideal speed-up 1/FLOP ratio). Medians of alternating repeats (dense and "
             "pruned timed in turn). Fallbacks: matrices the quantizer stored in another type (docs/deploy.md).", ""]
    table = [{"type": row["gguf_type"], "threads": row["threads"], "sparsity": row["sparsity"],
              "prompt + new": f'{row["prompt_len"]} + {row["new_tokens"]}', "stage": stage,
              "FLOP ratio": f'{row[f"{stage}_flop_ratio"]:.3f}', "dense tok/s": f'{row[f"dense_{stage}_tok_s"]:.1f}',
              "pruned tok/s": f'{row[f"{stage}_tok_s"]:.1f}', "speed-up": f'{row[f"{stage}_speedup"]:.2f}×',
              "efficiency": f'{row[f"{stage}_efficiency"]:.2f}',
              "MiB dense → pruned": f'{row["dense_gguf_bytes"] / 2**20:.0f} → {row["gguf_bytes"] / 2**20:.0f}',
              "fallbacks": f'{row["dense_fallbacks"]} → {row["fallbacks"]}'}
             for row in r["rows"] for stage in ("prefill", "decode")]
    lines += _table(table)
    hf = [x for x in ((transformers or {}).get("result") or {}).get("rows", []) if x.get("batch_size") == 1]
    if hf:
        lines += ["", "transformers at batch 1 (the speed section, same machine type, its own run): "
                  + "; ".join(f'{x["prompt_len"]} + {x["new_tokens"]} tokens, s={x["sparsity"]}: decode '
                              f'{x["dense_decode_tok_s"]:.1f} → {x["decode_tok_s"]:.1f} tok/s '
                              f'({x["decode_speedup"]:.2f}×), prefill {x["dense_prefill_tok_s"]:.0f} → '
                              f'{x["prefill_tok_s"]:.0f} tok/s' for x in hf) + "."]
    return lines


def statistics_md(doc: dict) -> list[str]:
    r = doc["result"]
    lines = ["## Activation statistics: one layer-wise pass vs whole-model forwards", "",
             "SmolLM2, 32 × 128 calibration tokens. Wanda-sp prunes layer by layer: with whole-model forwards it "
             "needs one forward truncated after each layer (quadratic in depth); FLAP was already one forward. "
             "Medians of alternating repeats, a fresh process each.", ""]
    table = [{"method": row["method"], "layer-wise s": f'{row["layerwise_seconds"]:.1f}',
              "forward s": f'{row["forward_seconds"]:.1f}', "speed-up": f'**{row["speedup"]:.2f}×**',
              "same result": "yes" if row.get("plans_identical", row.get("identical")) else "**no**"}
             for row in r["summary"]]
    return lines + _table(table)


def kl_md(doc: dict) -> list[str]:
    r = doc["result"]
    lines = ["## KL selection: plans as cut copies vs masks on the dense model", "",
             f'{r["model"]}: the KL of NIRVANA\'s plans at every γ of the `gamma=auto` grid to the dense model on the '
             "probe (one `kls_to_dense` call: a dense forward per batch, a pruned one per plan and batch, the copies' "
             "building included), each plan run as a physically cut copy or as a mask. Medians of alternating "
             "repeats, a fresh process each.", ""]
    table = [{"sparsity": row["sparsity"], "plans": row["plans"], "probe tokens": row["probe_tokens"],
              "masked s": f'{row["masked_seconds"]:.1f}', "cut s": f'{row["cut_seconds"]:.1f}',
              "speed-up": f'**{row["speedup"]:.2f}×**', "largest KL difference": f'{row["max_abs_kl_difference"]:.1e}',
              "same γ chosen": f'yes (γ = {row["chosen_gamma"]:g})' if row["same_choice"] else "**no**"}
             for row in r["summary"]]
    return lines + _table(table)


def kl_fitness_md(doc: dict) -> list[str]:
    r = doc["result"]
    lines = ["## KL fitness: choosing (draw, γ) before and after the shared dense reference", "",
             f'{r["model"]}: NIRVANA\'s plans of {r["draws"]} calibration draws rated on the probe to choose the (draw, '
             "γ) of lowest KL, as `recipe=nirvana_auto` does. Old: every γ of the grid, the dense probe outputs "
             "recomputed per draw, the whole-batch KL arithmetic. New: one dense reference built in a fresh folder "
             "(its forwards timed) and read back, γ coarse to fine, the chunked KL. Scoring is outside the timing. "
             "Medians of alternating repeats, a fresh process each.", ""]
    table = [{"sparsity": row["sparsity"], "draws × γ": f'{row["draws"]} × {row["gammas"]}',
              "probe tokens": row["probe_tokens"], "old s": f'{row["old_seconds"]:.1f}',
              "new s": f'{row["new_seconds"]:.1f}', "speed-up": f'**{row["speedup"]:.2f}×**',
              "pruned forwards old / new": f'{row["old_plan_batches"]} / {row["new_plan_batches"]}',
              "dense forwards old / new": f'{row["old_dense_batches"]} / {row["new_dense_batches"]}',
              "same choice": (f'yes ({row["new_chosen"]["draw"]}, γ = {row["new_chosen"]["gamma"]:g})'
                              if row["same_choice"] and row["same_kl"] else "**no**")}
             for row in r["summary"]]
    return lines + _table(table)


def zeroshot_md(doc: dict) -> list[str]:
    r = doc["result"]
    med, rps = r["medians"], r["requests_per_s"]
    lines = ["## Zero-shot evaluation: shared-prefix packing vs lm-eval's `hf`", "",
             f'{len(r["tasks"])} tasks ({", ".join(r["tasks"])}), first {r["limit"]} items each: {r["requests"]} '
             f'loglikelihood requests; batch {r["batch_size"]}, SmolLM2 fp32. A fresh process per measurement, '
             "alternating; medians. *loglikelihood s* is the time inside the model class (what a backend decides); "
             "*end to end* adds lm-eval's task building and aggregation, the same for both.", ""]
    lines += _table([{"lm-eval model class": f"`{lm}`", "loglikelihood s": f'{med[lm]["loglikelihood_seconds"]:.1f}',
                      "requests/s": f"{rps[lm]:.2f}", "end to end s": f'{med[lm]["seconds"]:.1f}'}
                     for lm in ("hf", "hf-shared-prefix")])
    lines += ["", f'Speed-up: **{r["ratio_loglikelihood"]:.2f}×** requests/s ({r["ratio_end_to_end"]:.2f}× end to end); '
              f'identical metrics on every task: **{"yes" if r["same_scores"] else "no"}**; largest per-item '
              f'log-likelihood difference {r["max_abs_loglikelihood_difference"]:.1e}.']
    return lines


def exactness_md(doc: dict) -> list[str]:
    r = doc["result"]
    lines = ["## Zero-shot exactness: `hf-shared-prefix` vs `hf`, item by item", "",
             f'{len(r["tasks"])} tasks, first {r["limit"]} items each, SmolLM2 fp32 dense and NIRVANA-pruned at '
             f's={r["pruned_sparsity"]}. Requests whose two fp32 log-likelihoods differ by more than the tolerance '
             "are re-scored in float64 (one unpadded forward, lm-eval's tokenisation): the distance of each class "
             "to that reference says whether a difference is packing or rounding.", ""]
    lines += _table([{"model": label, "items": m["items"], "requests": m.get("requests", "—"),
                      "max per-item log-likelihood difference": f'{m["max_abs_loglikelihood_difference"]:.1e}',
                      "requests over tolerance": (f'{len(m["over_tolerance"])} (> {m["tolerance"]:.0e})'
                                                  if "over_tolerance" in m else "—"),
                      "identical per-task metrics": "yes" if m["same_metrics"] else "**no**",
                      "flipped items": len(m["flips"])} for label, m in r["models"].items()])
    lines.append("")  # a list glued to a table reads as one more row in some renderers
    for label, m in r["models"].items():
        for f in m["flips"]:
            lines.append(f'- {label} {f["task"]} item {f["doc"]}: hf {f["hf"]} vs ours {f["hf-shared-prefix"]} '
                         "(a near tie)")
        for o in m.get("over_tolerance", []):
            lines.append(f'- {label} {o["task"]} item {o["doc"]} choice {o["choice"]} '
                         f'({o["continuation_tokens"]} continuation tokens): hf {o["hf"]:.5f}, ours '
                         f'{o["hf-shared-prefix"]:.5f}, float64 {o["loglikelihood"]:.5f} → |hf − float64| '
                         f'{o["hf_error"]:.1e}, |ours − float64| {o["hf-shared-prefix_error"]:.1e}')
    return lines


def quant_md(doc: dict) -> list[str]:
    r = doc["result"]
    lines = ["## Quantization: size and speed vs the float model", "",
             f'{r["model"]}, {r["threads"]} threads; dense (s=0) and NIRVANA-pruned copies, each quantized afresh. '
             "Size = state-dict bytes in memory (file: torch.save of the whole model; embeddings and LM head stay "
             "float). Speed-up = quantized / float tokens per second, medians of alternating repeats.", ""]
    lines += _table([{"s": f'{x["sparsity"]:g}', "scheme": x["scheme"],
                      "shape": f'{x["batch_size"]}×{x["prompt_len"]}+{x["new_tokens"]}',
                      "MiB float → quant": f'{x["float_bytes"] / 2**20:.0f} → {x["quant_bytes"] / 2**20:.0f}',
                      "file MiB": f'{x["quant_file_bytes"] / 2**20:.0f}',
                      "per-channel layers": f'{x["per_channel_layers"]}/{x["layers"]}',
                      "prefill tok/s (float)": f'{x["prefill_tok_s"]:.0f} ({x["float_prefill_tok_s"]:.0f})',
                      "decode tok/s (float)": f'{x["decode_tok_s"]:.1f} ({x["float_decode_tok_s"]:.1f})',
                      "prefill ×": f'{x["prefill_speedup"]:.2f}', "decode ×": f'{x["decode_speedup"]:.2f}'}
                     for x in r["rows"]])
    return lines


def demo_md(doc: dict) -> list[str]:
    r = doc["result"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["stages"].items())
    return ["## `make demo` job", "", f'{r["seconds"] / 60:.1f} min wall ({stages}), {r["rows"]} result rows; '
            f'{r["command"]}.' + (f' Overrides: `{" ".join(r["args"])}`.' if r["args"] else "")]


def _zeroshot_gpu_md(z: dict) -> list[str]:
    if z.get("oom"):
        return [f"Zero-shot step: out of memory ({z['error']})."]
    lines = [f"Zero-shot step: lm-eval's `hf` vs `hf-shared-prefix` on {z['requests']} requests shaped like the nine-task "
             f"mix, batch {z['batch_size']}, median of {z['repeats']}: {z['requests_per_s']['hf']:.0f} vs "
             f"{z['requests_per_s']['hf-shared-prefix']:.0f} requests/s (**{z['ratio']:.2f}×**); largest per-request "
             f"log-likelihood difference {z['max_abs_loglikelihood_difference']:.3g}, greedy agreement "
             f"{'complete' if z['same_greedy'] else 'not complete'}."]
    ref = z.get("reference")
    if ref:
        lines += ["", f"Each class against `hf` on the same model cast to {ref['dtype']}:", ""]
        lines += _table([{"class": name, "max abs Δ log-likelihood": f"{g['max_abs']:.3g}",
                          "mean abs Δ": f"{g['mean_abs']:.3g}", "same greedy answer": f"{g['same_greedy']:.1%}"}
                         for name, g in ref.items() if name != "dtype"])
    return lines


def gpu_md(doc: dict) -> list[str]:
    r = doc["result"]
    if "scoring" not in r:  # `--only zeroshot`
        return ["## GPU check, zero-shot step alone", "", f"{r['shape']}, {r['dtype']}, {r['device_name']}.", "",
                *_zeroshot_gpu_md(r["zeroshot"])]
    p = r["parameters"]
    lines = ["## GPU check", "",
             f"{r['shape']} (random weights), {r['dtype']}, {r['device_name']}; s = {r['sparsity']}, γ = {r['gamma']}, "
             f"calibration {r['calibration'][0]} × {r['calibration'][1]}. Checks: "
             + ", ".join(f"{k} **{v}**" for k, v in r["checks"].items()) + ".", "",
             f"Closed-form budget {r['closed_form']['groups']} groups / {r['closed_form']['neurons']:,} neurons; the "
             f"plan prunes {p['pruned_groups']} groups / {p['pruned_neurons']:,} neurons (after the guards of "
             f"docs/method.md §2: ≥ 1 group per layer, MLP widths rounded up to ×8), keeps {p['kept_fraction']:.1%} of "
             f"{p['dense']:,} parameters; plan identical to the naive full-gradient scorer's: "
             f"{r['plan_identical_to_naive']}.", ""]
    lines += _table([{"scorer": s["variant"], "cap (GiB)": _fmt(s["cap_gib"], ".0f"),
                      "peak (GiB)": "OOM" if s["oom"] else f"{s['peak_gib']:.2f}",
                      "seconds": "—" if s["oom"] else f"{s['seconds']:.2f}"} for s in r["scoring"]])
    lines += [""] + _table([{"batch": s["batch_size"], "prefill speed-up": f"{s['prefill_speedup']:.2f}×",
                             "decode speed-up": f"{s['decode_speedup']:.2f}×",
                             "FLOP ratio": f"{s['prefill_flop_ratio']:.2f}",
                             "prefill efficiency": f"{s['prefill_efficiency']:.2f}"}
                            for s in r["speed"] if not s.get("oom")])
    lines += [""] + _table([{"scheme (pruned model)": q["scheme"],
                             "size ratio": "error" if "error" in q else f"{q['size_ratio']:.3f}",
                             "prefill vs float": "—" if "error" in q else f"{q['prefill_speedup']:.2f}×",
                             "decode vs float": "—" if "error" in q else f"{q['decode_speedup']:.2f}×",
                             "per-channel layers": q.get("per_channel_layers", "—")} for q in r["quantization"]])
    return lines + ["", *_zeroshot_gpu_md(r["zeroshot"])]


RENDER = {"scoring": scoring_md, "statistics": statistics_md, "kl": kl_md, "kl_fitness": kl_fitness_md,
          "speed": speed_md, "llamacpp": llamacpp_md,
          "quant": quant_md, "zeroshot": zeroshot_md,
          "exactness": exactness_md, "demo": demo_md, "gpu_check": gpu_md, "gpu_zeroshot": gpu_md}


def write_summary(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    docs = load_sections(out_dir)
    lines = ["# Benchmarks", "", "Written by `make bench` (`python -m experiments.bench`) from the JSON files beside "
             "it; each section says when, where and with which command it was measured.", ""]
    for name, doc in docs.items():
        body = llamacpp_md(doc, docs.get("speed")) if name == "llamacpp" else RENDER[name](doc)
        lines += body + ["", _provenance(doc), ""]
    path = out_dir / "SUMMARY.md"
    path.write_text("\n".join(lines))
    if "scoring" in docs:
        scoring_figure(docs["scoring"], out_dir / "scoring.png")
    return path


def scoring_figure(doc: dict, path: Path) -> Path:
    """Peak memory against time, one point per variant, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["result"]["summary"] if "seconds_median" in r]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for r in (r for r in rows if r["model"] == model):
            ax.scatter(r["seconds_median"], r["peak_gib_median"], s=60)
            ax.annotate(r["variant"], (r["seconds_median"], r["peak_gib_median"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        ax.set_title(model)
        ax.set_xlabel("scoring time (s, median)")
        ax.set_ylabel("peak resident memory (GiB, median)")
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
