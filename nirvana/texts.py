"""Text sets by name and by identity: the one registry of the offline texts, and the one way to read a text file.

Calibration (nirvana.calibration), KL probing, perplexity (nirvana.evaluation.perplexity) and the offline recovery
data (nirvana.recovery) name their texts here. Every set has an identity — the items of its source it holds, a
`Span` — so that a run can prove, before it loads a model, that it never calibrates or probes on an item it
evaluates (docs/protocol.md, "Disjoint data"). The offline sets are cut from two benchmark files by `make assets`
(nirvana/assets/texts.py) into JSONL files with a "text" field:

    LAMBADA-OpenAI test (5,153 passages)       BoolQ validation (3,270 rows; passages by the row that first shows them)
    [0, 2653)     lambada_head   evaluation    [0, 2270)     wiki_passages  evaluation
    [2653, 3153)  lambada_probe  KL probe      [2270, 2570)  wiki_probe     KL probe
    [3153, 5153)  lambada_tail   calibration   [2570, 3270)  wiki_tail      calibration
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .atomic import iter_jsonl

# Where each source is cut (item indices of LAMBADA-OpenAI test / BoolQ validation rows).
LAMBADA_PROBE, LAMBADA_TAIL, LAMBADA_END = 2653, 3153, 5153
WIKI_PROBE, WIKI_TAIL, WIKI_END = 2270, 2570, 3270


@dataclass(frozen=True)
class Span:
    """Items [start, stop) of one source; a negative bound counts from the source's end, None is its end.

    `source` names the items canonically, whoever reads them: "lambada_openai/test" is the same 5,153 passages
    whether they arrive as the offline text sets, the local zero-shot task or the hub's perplexity set."""

    source: str
    start: int = 0
    stop: int | None = None

    def overlaps(self, other: Span) -> bool:
        """True unless the two are provably disjoint (different sources, or ranges that end before the other
        starts). Bounds measured from different ends cannot be compared without the source's length, so they
        count as overlapping — except a range and its exact complement, [0, -k) and [-k, end)."""
        if self.source != other.source:
            return False
        return not (_ends_before(self.stop, other.start) or _ends_before(other.stop, self.start))

    def __str__(self) -> str:
        return f"{self.source}[{self.start}:{'' if self.stop is None else self.stop}]"


def _ends_before(stop: int | None, start: int) -> bool:
    if stop is None:
        return False
    return (stop >= 0) == (start >= 0) and stop <= start


@dataclass(frozen=True)
class TextSet:
    name: str
    file: str
    span: Span
    role: str  # "evaluation" | "probe" | "calibration"
    probe: str | None = None  # a calibration set's KL probe set


OFFLINE_SETS = {s.name: s for s in (
    TextSet("lambada_head", "lambada_head.jsonl", Span("lambada_openai/test", 0, LAMBADA_PROBE), "evaluation"),
    TextSet("lambada_probe", "lambada_probe.jsonl", Span("lambada_openai/test", LAMBADA_PROBE, LAMBADA_TAIL), "probe"),
    TextSet("lambada_tail", "lambada_tail.jsonl", Span("lambada_openai/test", LAMBADA_TAIL, LAMBADA_END),
            "calibration", probe="lambada_probe"),
    TextSet("wiki_passages", "wiki_passages.jsonl", Span("boolq/validation", 0, WIKI_PROBE), "evaluation"),
    TextSet("wiki_probe", "wiki_probe.jsonl", Span("boolq/validation", WIKI_PROBE, WIKI_TAIL), "probe"),
    TextSet("wiki_tail", "wiki_tail.jsonl", Span("boolq/validation", WIKI_TAIL, WIKI_END), "calibration",
            probe="wiki_probe"),
)}
OFFLINE_TEXTS = {name: s.file for name, s in OFFLINE_SETS.items()}


def text_file(name: str | Path) -> Path:
    """A registered offline set's file, or the path itself; a clear error when it does not exist."""
    if str(name) in OFFLINE_TEXTS:
        path = paths.text_dir() / OFFLINE_TEXTS[str(name)]
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build the offline text sets with `make assets`")
        return path
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist (registered offline sets: {sorted(OFFLINE_TEXTS)})")
    return path


def file_source(path: str | Path) -> str:
    """A text file's canonical source name: its content, so a copy under another name is the same source."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return f"file:{h.hexdigest()[:16]}"


def read_jsonl_texts(path: str | Path, field: str = "text") -> list[str]:
    out = []
    for number, row in enumerate(iter_jsonl(path, strict=True), start=1):
        if not isinstance(row.get(field), str):
            raise ValueError(f"{path}: object {number} has no text field {field!r} (keys: {sorted(row)})")
        out.append(row[field])
    return out


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """A .jsonl file (one object per line, `field` holds the text) or a plain text file (one text per
    blank-line-separated paragraph)."""
    path = text_file(path)
    if path.suffix == ".jsonl":
        return read_jsonl_texts(path, field)
    return [p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def pydoc_texts() -> list[str]:
    """The standard library's documentation topics: always present (tests, smoke runs)."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]
