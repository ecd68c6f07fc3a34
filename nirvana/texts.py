"""Text sets by name: the one registry of the offline texts, and the one way to read a text file.

Calibration (nirvana.calibration), perplexity (nirvana.evaluation.perplexity) and the offline recovery data
(nirvana.recovery) all name their texts here. The offline sets are built by `make assets` into the cache
(docs/assets.md): JSONL files with a "text" field.
"""

from __future__ import annotations

from pathlib import Path

from . import paths
from .atomic import iter_jsonl

# name → file in the text cache (nirvana.paths.text_dir)
OFFLINE_TEXTS = {
    "lambada_head": "lambada_head.jsonl",
    "lambada_tail": "lambada_tail.jsonl",
    "wiki_passages": "wiki_passages.jsonl",
}


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
