"""Plain-text sets for calibration, KL probing and perplexity, cut from the benchmark JSONL files.

Which items go where is declared in nirvana/texts.py (the registry every run checks disjointness against); this
module only cuts the files accordingly:
- wiki_passages / wiki_probe / wiki_tail: BoolQ's unique Wikipedia passages, each placed by the validation row
  that first shows it ([0, 2270) / [2270, 2570) / [2570, 3270)) — the offline stand-in for WikiText;
- lambada_head / lambada_probe / lambada_tail: LAMBADA test passages [0, 2653) / [2653, 3153) / [3153, 5153)
  (novels, like BookCorpus).
Each line keeps the item index it came from (`row` or `idx`), so disjointness can be re-checked downstream.
"""

from __future__ import annotations

from pathlib import Path

from .. import paths
from ..atomic import atomic_dir, read_jsonl, write_jsonl
from ..texts import LAMBADA_END, LAMBADA_PROBE, LAMBADA_TAIL, OFFLINE_SETS, WIKI_END, WIKI_PROBE, WIKI_TAIL
from . import benchmarks
from ._errors import AssetError
from ._manifest import problem, read_manifest, write_manifest

NAME = "texts"
RECIPE = 2  # 2: probe sets and the BoolQ-row split (docs/protocol.md, "Disjoint data")
STAGES = 4
N_WIKI = 2938  # unique passages in BoolQ validation
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


def _wiki_sets(boolq_rows: list[dict]) -> dict[str, list[dict]]:
    first_row: dict[str, int] = {}  # dicts keep insertion order: first-seen order for free
    for row_index, row in enumerate(boolq_rows):
        first_row.setdefault(row["passage"], row_index)
    if len(first_row) != N_WIKI:
        raise AssetError(f"BoolQ has {len(first_row)} unique passages, expected {N_WIKI}")
    cuts = {"wiki_passages": (0, WIKI_PROBE), "wiki_probe": (WIKI_PROBE, WIKI_TAIL), "wiki_tail": (WIKI_TAIL, WIKI_END)}
    return {name: [{"text": t, "row": r} for t, r in first_row.items() if a <= r < b] for name, (a, b) in cuts.items()}


def _lambada_sets(lambada: list[str]) -> dict[str, list[dict]]:
    if len(lambada) != LAMBADA_END:
        raise AssetError(f"lambada_openai.jsonl has {len(lambada)} items, expected {LAMBADA_END}")
    cuts = {"lambada_head": (0, LAMBADA_PROBE), "lambada_probe": (LAMBADA_PROBE, LAMBADA_TAIL),
            "lambada_tail": (LAMBADA_TAIL, LAMBADA_END)}
    return {name: [{"text": lambada[i], "idx": i} for i in range(a, b)] for name, (a, b) in cuts.items()}


def build(bar) -> None:
    if benchmarks.check() is not None:
        raise AssetError(
            f"the text sets need the benchmark data first: {benchmarks.check()}. "
            f"Run `python -m nirvana.assets build` (without --only) to build both."
        )
    data = benchmarks.output()
    with atomic_dir(output()) as tmp:
        bar.set_postfix_str("wiki sets (unique BoolQ passages by first row)")
        sets = _wiki_sets(read_jsonl(data / "boolq.jsonl"))
        bar.update()
        bar.set_postfix_str("lambada sets")
        lambada = [r["text"] for r in read_jsonl(data / "lambada_openai.jsonl")]
        sets |= _lambada_sets(lambada)
        bar.update()
        for name, rows in sets.items():
            write_jsonl(tmp / OFFLINE_SETS[name].file, rows)
        bar.update()
        texts_of = {name: {r["text"] for r in rows} for name, rows in sets.items()}
        write_manifest(
            tmp, NAME, RECIPE, inputs=_input_hashes(),
            sets={s.file: {"span": str(s.span), "items": len(sets[name]), "use": s.role}
                  for name, s in OFFLINE_SETS.items()},
            # Index-disjoint sets could still share a passage verbatim; count that too (it is 0).
            identical_texts_across_sets={f"{a}/{b}": len(texts_of[a] & texts_of[b]) for a in sets for b in sets
                                         if a < b and OFFLINE_SETS[a].span.source == OFFLINE_SETS[b].span.source},
        )
        bar.update()
