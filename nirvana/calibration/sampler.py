"""The official calibration sampler, reproduced draw for draw (NIRVANA's `get_bookcorpus`, docs/method.md §3).

`random.seed(seed)`; keep texts longer than `seq_len` characters; for each sample, draw a random text index
until the text has ≥ `seq_len` tokens and was not used before; then draw a random window start in
[0, n_tokens - seq_len]. Texts are tokenized as the official code does (`tokenizer(text)`, special tokens
included). Unlike the official loop, we stop with a clear error when the source cannot yield `n_samples`
windows instead of spinning forever, and `exclude` keeps chosen texts out (probe sets disjoint from every
calibration candidate); with nothing excluded the draws are the official ones.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Windows:
    ids: torch.Tensor  # [n_samples, seq_len]
    texts: list[str]  # the text each window came from (to keep probe sets disjoint from candidates)


def char_prefilter(texts: Sequence[str], seq_len: int) -> Sequence[str]:
    """The official cheap pre-filter (more characters than seq_len); hub datasets filter lazily."""
    if hasattr(texts, "filtered"):
        return texts.filtered(lambda t: len(t) > seq_len)
    return [t for t in texts if len(t) > seq_len]


def draw_windows(
    texts: Sequence[str],
    tokenizer,
    n_samples: int,
    seq_len: int,
    seed: int,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> Windows:
    if n_samples < 1 or seq_len < 1:
        raise ValueError(f"need n_samples ≥ 1 and seq_len ≥ 1, got {n_samples} and {seq_len}")
    rng = random.Random(seed)
    pool = char_prefilter(texts, seq_len)
    used: set[int] = set()
    unusable: set[int] = set()
    windows, chosen = [], []
    for _ in range(n_samples):
        while True:
            if len(used) + len(unusable) >= len(pool):
                raise ValueError(
                    f"the calibration source has only {len(used)} usable texts with ≥ {seq_len} tokens "
                    f"(of {len(texts)}; {len(exclude)} texts excluded), but {n_samples} samples of {seq_len} tokens "
                    "were requested; use fewer samples, shorter windows, or longer documents"
                )
            i = rng.randint(0, len(pool) - 1)
            if i in used or i in unusable:
                continue
            if exclude and pool[i] in exclude:
                unusable.add(i)
                continue
            ids = tokenizer(pool[i], return_tensors="pt").input_ids[0]
            if ids.numel() >= seq_len:
                used.add(i)
                break
            unusable.add(i)
        start = rng.randint(0, ids.numel() - seq_len)
        windows.append(ids[start : start + seq_len])
        chosen.append(pool[i])
    return Windows(torch.stack(windows).long(), chosen)


def sample_windows(texts: Sequence[str], tokenizer, n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """n_samples windows of exactly seq_len tokens, each from a distinct text → LongTensor [n, seq_len]."""
    return draw_windows(texts, tokenizer, n_samples, seq_len, seed).ids
