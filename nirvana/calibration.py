"""Calibration batches: the ids the scorer runs on.

The official sampler (NIRVANA's `get_bookcorpus`, REFERENCE.md §3), reproduced draw for draw:
`random.seed(seed)`; keep texts longer than `seq_len` characters; for each sample, draw a random text index
until the text has ≥ `seq_len` tokens and was not used before; then draw a random window start in
[0, n_tokens - seq_len]. Texts are tokenized as the official code does (`tokenizer(text)`, special tokens
included). Unlike the official loop, we stop with a clear error when the source cannot yield `n_samples`
windows instead of spinning forever.

Sources here: a saved id tensor (`tensor`) and the offline text sets (`lambada_tail`, `wiki_passages`,
any local text/JSONL file). Hub datasets and KL-based selection come with the calibration issue.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from . import paths


def sample_windows(texts: Sequence[str], tokenizer, n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """n_samples windows of exactly seq_len tokens, each from a distinct text → LongTensor [n, seq_len]."""
    if n_samples < 1 or seq_len < 1:
        raise ValueError(f"need n_samples ≥ 1 and seq_len ≥ 1, got {n_samples} and {seq_len}")
    rng = random.Random(seed)
    pool = [t for t in texts if len(t) > seq_len]  # cheap pre-filter on characters, as the official code
    used: set[int] = set()
    too_short: set[int] = set()
    windows = []
    for _ in range(n_samples):
        while True:
            if len(used) + len(too_short) >= len(pool):
                raise ValueError(
                    f"the calibration source has only {len(used)} texts with ≥ {seq_len} "
                    f"tokens (of {len(texts)}), but {n_samples} samples of {seq_len} tokens were requested; "
                    "use fewer samples, shorter windows, or longer documents"
                )
            i = rng.randint(0, len(pool) - 1)
            if i in used or i in too_short:
                continue
            ids = tokenizer(pool[i], return_tensors="pt").input_ids[0]
            if ids.numel() >= seq_len:
                used.add(i)
                break
            too_short.add(i)
        start = rng.randint(0, ids.numel() - seq_len)
        windows.append(ids[start : start + seq_len])
    return torch.stack(windows).long()


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """A .jsonl file (one object per line, `field` holds the text) or a plain text file (one text per
    blank-line-separated paragraph)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"calibration text file {path} does not exist (offline sets come from `make assets`)")
    if path.suffix == ".jsonl":
        with open(path) as f:
            return [json.loads(line)[field] for line in f if line.strip()]
    return [p for p in path.read_text().split("\n\n") if p.strip()]


def join_consecutive(texts: Sequence[str], group: int) -> list[str]:
    """Join every `group` consecutive passages with a blank line.

    LAMBADA passages are short (only 8 of the 2000 tail passages reach 128 SmolLM2 tokens), so the
    official one-passage-per-window sampler would never finish on them; joined in 4s they make 500
    novel excerpts of book-like text, the role BookCorpus plays in the paper.
    """
    if group < 1:
        raise ValueError(f"group must be ≥ 1, got {group}")
    return ["\n\n".join(texts[i : i + group]) for i in range(0, len(texts), group)]


OFFLINE_TEXTS = {"lambada_tail": "lambada_tail.jsonl", "wiki_passages": "wiki_passages.jsonl"}
SOURCES = ("tensor", "text_file", "pydoc", *OFFLINE_TEXTS)


def offline_texts(name: str) -> list[str]:
    if name == "pydoc":  # the standard library's documentation topics: always present (tests, smoke runs)
        from pydoc_data.topics import topics

        return [topics[k] for k in sorted(topics)]
    if name not in OFFLINE_TEXTS:
        raise ValueError(f"unknown calibration source {name!r}; choose one of {sorted(SOURCES)}")
    return read_texts(paths.text_dir() / OFFLINE_TEXTS[name])


def load_id_tensor(path: str | Path) -> torch.Tensor:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"calibration tensor {path} does not exist")
    ids = torch.load(path, weights_only=True)
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{path} holds a {type(ids).__name__}, expected a LongTensor [n_samples, seq_len]")
    return ids.long()


def build_calibration(
    source: str,
    tokenizer=None,
    n_samples: int = 32,
    seq_len: int = 128,
    seed: int = 0,
    path: str | None = None,
    join: int = 1,
    field: str = "text",
) -> torch.Tensor:
    """One entry point for the CLI and notebooks: `source` is `tensor`, `text_file`, or an offline set."""
    if source not in SOURCES:
        raise ValueError(f"unknown calibration source {source!r}; choose one of {sorted(SOURCES)}")
    if source == "tensor":
        if path is None:
            raise ValueError("calibration source 'tensor' needs calibration.path=FILE.pt")
        return load_id_tensor(path)
    if source == "text_file":
        if path is None:
            raise ValueError("calibration source 'text_file' needs calibration.path=FILE (.jsonl or .txt)")
        texts = read_texts(path, field)
    else:
        texts = offline_texts(source)
    if join > 1:
        texts = join_consecutive(texts, join)
    if tokenizer is None:
        raise ValueError(f"calibration source {source!r} needs a tokenizer")
    return sample_windows(texts, tokenizer, n_samples, seq_len, seed)
