"""A held-out report beside a KL-driven search: the perplexity of a plan on the first windows of an evaluation set.

A searched allocation (nirvana.allocation.search) minimises the KL on the probe; whether that over-fits the probe
shows on text the search never sees. `HeldOut` holds the first few windows of one of the run's own evaluation sets,
cut as the perplexity protocol cuts them (nirvana.evaluation.perplexity: the texts joined by "\\n\\n", tokenized
once without special tokens, consecutive windows of `seq_len` tokens), and gives a plan's mean NLL per predicted
token on them. It is a REPORT: nothing is ever chosen by it (docs/method.md, searched allocation). The protocol keeps
evaluation text disjoint from calibration and probe text, so these windows are disjoint from both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..adapters import get_adapter


def heldout_windows(texts: list[str], tokenizer, seq_len: int, n_windows: int) -> torch.Tensor:
    """The first `n_windows` perplexity windows [n, seq_len] of `texts` (fewer if the text is shorter)."""
    if seq_len < 2 or n_windows < 1:
        raise ValueError(f"held-out windows need seq_len ≥ 2 and n_windows ≥ 1, got {seq_len} and {n_windows}")
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    n = min(n_windows, len(ids) // seq_len)
    if n < 1:
        raise ValueError(f"the held-out text has {len(ids)} tokens: not one window of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@dataclass
class HeldOutText:
    """Which held-out windows to report on, before a tokenizer exists: an evaluation set's texts, its metric label
    (`wiki_passages@512`), the window length and how many windows."""

    label: str
    texts: list[str]
    seq_len: int
    windows: int


@dataclass
class HeldOut:
    """The first windows of one evaluation set (`label`: its metric name, e.g. `wiki_passages@512`)."""

    label: str
    windows: torch.Tensor  # [n, seq_len]
    batch_size: int = 4

    @classmethod
    def build(cls, spec: HeldOutText, tokenizer) -> HeldOut:
        return cls(spec.label, heldout_windows(spec.texts, tokenizer, spec.seq_len, spec.windows))

    @torch.no_grad()
    def nll(self, model: torch.nn.Module) -> float:
        """Mean NLL per predicted token of `model` on the windows (its exp is the perplexity), as the
        perplexity protocol computes it (fp32 cross-entropy over each window's predicted tokens)."""
        adapter = get_adapter(model)
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for start in range(0, self.windows.shape[0], self.batch_size):
            logits, targets = adapter.window_logits(self.windows[start : start + self.batch_size].to(device))
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
            total += float(loss.double().sum())
            count += targets.numel()
        nll = total / count
        if not math.isfinite(nll):
            raise ValueError(f"held-out NLL on {self.label} is not finite ({nll})")
        return nll

    @property
    def record(self) -> dict:
        return {"set": self.label, "windows": int(self.windows.shape[0]), "seq_len": int(self.windows.shape[1])}
