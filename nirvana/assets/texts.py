"""Plain-text sets for calibration and perplexity, cut from the benchmark JSONL files.

- wiki_passages.jsonl: BoolQ's unique Wikipedia passages in first-seen order -- the offline stand-in for
  WikiText (perplexity evaluation).
- lambada_head.jsonl / lambada_tail.jsonl: LAMBADA test passages [0:3153] and [3153:5153] (novels, like
  BookCorpus). Calibration uses the tail and evaluation the head, so calibration never sees evaluated text:
  the split is by index, disjoint by construction, and the manifest records it.
"""

from __future__ import annotations

from pathlib import Path

from .. import paths
from ..atomic import atomic_dir, read_jsonl, write_jsonl
from . import benchmarks
from ._errors import AssetError
from ._manifest import problem, read_manifest, write_manifest

NAME = "texts"
RECIPE = 1
STAGES = 4
HEAD_END, TAIL_END = 3153, 5153
N_WIKI = 2938
INPUTS = ("boolq.jsonl", "lambada_openai.jsonl")


def output() -> Path:
    return paths.text_dir()


def _input_hashes() -> dict[str, str] | None:
    manifest = read_manifest(benchmarks.output()) or {}
    files = manifest.get("files", {})
    return {f: files[f]["sha256"] for f in INPUTS} if all(f in files for f in INPUTS) else None


def check(deep: bool = False) -> str | None:
    why = problem(output(), NAME, RECIPE, deep=deep)
    if why is None and (read_manifest(output()) or {}).get("inputs") != _input_hashes():
        why = f"{output()} was cut from other benchmark files than those in {benchmarks.output()}"
    return why


def build(bar) -> None:
    if benchmarks.check() is not None:
        raise AssetError(
            f"the text sets need the benchmark data first: {benchmarks.check()}. "
            f"Run `python -m nirvana.assets build` (without --only) to build both."
        )
    data = benchmarks.output()
    with atomic_dir(output()) as tmp:
        bar.set_postfix_str("wiki_passages (unique BoolQ passages)")
        seen: dict[str, None] = {}  # dicts keep insertion order: first-seen order for free
        for row in read_jsonl(data / "boolq.jsonl"):
            seen.setdefault(row["passage"], None)
        if len(seen) != N_WIKI:
            raise AssetError(f"BoolQ has {len(seen)} unique passages, expected {N_WIKI}")
        write_jsonl(tmp / "wiki_passages.jsonl", ({"text": p} for p in seen))
        bar.update()

        bar.set_postfix_str(f"lambada head [0:{HEAD_END}] / tail [{HEAD_END}:{TAIL_END}]")
        lambada = [r["text"] for r in read_jsonl(data / "lambada_openai.jsonl")]
        if len(lambada) != TAIL_END:
            raise AssetError(f"lambada_openai.jsonl has {len(lambada)} items, expected {TAIL_END}")
        # `idx` is the position in LAMBADA's test set, kept so disjointness can be re-checked downstream.
        write_jsonl(
            tmp / "lambada_head.jsonl", ({"text": t, "idx": i} for i, t in enumerate(lambada[:HEAD_END]))
        )
        bar.update()
        write_jsonl(
            tmp / "lambada_tail.jsonl",
            ({"text": t, "idx": i} for i, t in enumerate(lambada[HEAD_END:], start=HEAD_END)),
        )
        bar.update()
        write_manifest(
            tmp,
            NAME,
            RECIPE,
            inputs=_input_hashes(),
            sets={
                "wiki_passages.jsonl": {
                    "source": "boolq.jsonl passages, unique, first-seen order",
                    "items": len(seen),
                    "use": "perplexity",
                },
                "lambada_head.jsonl": {
                    "source": "lambada_openai.jsonl",
                    "items": HEAD_END,
                    "range": [0, HEAD_END],
                    "use": "evaluation",
                },
                "lambada_tail.jsonl": {
                    "source": "lambada_openai.jsonl",
                    "items": TAIL_END - HEAD_END,
                    "range": [HEAD_END, TAIL_END],
                    "use": "calibration",
                },
            },
            disjoint={
                "lambada_head.jsonl/lambada_tail.jsonl": "by construction: index ranges "
                f"[0, {HEAD_END}) and [{HEAD_END}, {TAIL_END}) of the same list do not overlap",
                # Index-disjoint could still share a passage verbatim; count that too (it is 0).
                "identical_texts_in_head_and_tail": len(set(lambada[:HEAD_END]) & set(lambada[HEAD_END:])),
            },
        )
        bar.update()
