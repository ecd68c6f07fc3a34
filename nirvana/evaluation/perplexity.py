"""Perplexity with the official protocol (docs/protocol.md).

Join the split's texts with "\\n\\n", tokenize the whole string once, cut it into non-overlapping windows of
`seq_len` tokens (the remainder is dropped), run each window on its own, and report
PPL = exp(mean NLL over every predicted token) — each window predicts its tokens 2..seq_len from the ones
before it. Windows all have the same length, so this equals the exp of the mean of per-window losses, which
is what the official code computes. Always quote seq_len (the metric name does: `ppl/wikitext2@512`): a
128-token window gives far higher perplexity than a 2048-token one.

Encoder–decoder models (T5) use the seq2seq protocol: the same windows, each split as the calibration is
(nirvana.adapters.t5.split_windows) into a prefix of P = ⌊seq_len/2⌋ tokens + EOS fed to the encoder and a
continuation of seq_len − P tokens the decoder predicts, teacher-forced behind its start token; PPL =
exp(mean NLL over every continuation token), all of them predicted (the first from the prefix alone). The
metric name says so: `ppl/wiki_passages@64+64` (prefix + continuation), never comparable to a decoder's `@128`.

Datasets: `wikitext2` (wikitext-103-v1 test — the same text as WikiText-2 test), `ptb` (ptb_text_only
validation), `lambada` (EleutherAI/lambada_openai test) from the hub; offline `wiki_passages` and
`lambada_head` (built by `make assets`); or a path to any .jsonl (field "text") / plain-text file (read as its
blank-line-separated paragraphs, which the protocol joins with "\n\n" again).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..adapters import get_adapter
from ..texts import OFFLINE_SETS, Span, file_source, read_texts

# name → (hub dataset, config, split, text field), as the official code loads them
HUB_DATASETS = {
    "wikitext2": ("wikitext", "wikitext-103-v1", "test", "text"),
    "ptb": ("ptb_text_only", "penn_treebank", "validation", "sentence"),
    "lambada": ("EleutherAI/lambada_openai", "default", "test", "text"),
}
OFFLINE_DATASETS = ("wiki_passages", "lambada_head")  # registered in nirvana.texts


HUB_SPANS = {"wikitext2": Span("wikitext/test"), "ptb": Span("ptb/validation"), "lambada": Span("lambada_openai/test")}


def dataset_span(name: str) -> Span:
    """The items a perplexity dataset is made of (for disjointness checks; docs/protocol.md)."""
    if name in HUB_SPANS:
        return HUB_SPANS[name]
    if name in OFFLINE_DATASETS:
        return OFFLINE_SETS[name].span
    return Span(file_source(name))


def dataset_label(name: str) -> str:
    """The name used in metric names: registered names as is, files by their stem."""
    if name in HUB_DATASETS or name in OFFLINE_DATASETS:
        return name
    return Path(name).stem


def check_dataset_name(name: str) -> None:
    """Cheap validation (no loading), for CLIs to fail before loading a model."""
    if name in HUB_DATASETS or name in OFFLINE_DATASETS:
        return
    if not Path(name).is_file():
        raise ValueError(
            f"unknown perplexity dataset {name!r}: choose one of {sorted(HUB_DATASETS)} (hub), "
            f"{sorted(OFFLINE_DATASETS)} (offline), or give the path of an existing .jsonl/.txt file"
        )


def _load_hub(name: str) -> list[str]:
    import datasets

    repo, config, split, field = HUB_DATASETS[name]
    try:
        data = datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # offline machines end here; say what to use instead
        raise RuntimeError(
            f"could not load {repo}/{config} [{split}] for perplexity dataset {name!r} ({type(e).__name__}: {e}). "
            f"Without the hub, use an offline set: {sorted(OFFLINE_DATASETS)}"
        ) from e
    # WikiText's empty lines are kept: the official protocol joins the raw split as it is.
    return list(data[field])


def load_texts(name: str, max_texts: int | None = None, field: str = "text") -> list[str]:
    """The texts of a perplexity dataset (first `max_texts` of them when given)."""
    check_dataset_name(name)
    texts = _load_hub(name) if name in HUB_DATASETS else read_texts(name, field)
    if max_texts is not None:
        if max_texts < 1:
            raise ValueError(f"max_texts must be ≥ 1 or null, got {max_texts}")
        texts = texts[:max_texts]
    return texts


def encode(texts: Sequence[str], tokenizer) -> torch.Tensor:
    """The joined corpus as one 1-D LongTensor of token ids.

    No special tokens and no BOS: the official protocol tokenizes the joined text as one stream and every
    window is a plain slice of it, so a BOS would only exist at the start of window 0 anyway.
    `verbose=False` silences the "longer than the model's maximum length" warning: windows are cut below.
    """
    enc = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)
    return torch.tensor(enc["input_ids"], dtype=torch.long)


def cut_windows(ids: torch.Tensor, seq_len: int, max_windows: int | None = None,
                max_tokens: int | None = None) -> torch.Tensor:
    """[n_windows, seq_len] non-overlapping windows; the remainder is dropped. `max_tokens` caps the corpus
    tokens used (whole windows only), `max_windows` the window count — quick runs, recorded as a limit."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be ≥ 2 (a window predicts seq_len - 1 tokens), got {seq_len}")
    n = ids.numel() // seq_len
    if max_tokens is not None:
        n = min(n, max_tokens // seq_len)
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"the corpus has {ids.numel()} tokens: not one window of {seq_len} (or the limit is too small)")
    return ids[: n * seq_len].view(n, seq_len)


@dataclass
class PerplexityResult:
    dataset: str
    seq_len: int
    ppl: float
    nll: float  # mean NLL per predicted token, in nats
    n_windows: int
    n_tokens: int  # predicted tokens: n_windows × (seq_len − 1); seq2seq: n_windows × (seq_len − prefix_len)
    limit: str | None  # "max_texts=300,max_windows=8" when limited, else None
    prefix_len: int | None = None  # seq2seq: encoder prefix tokens per window (None: causal protocol)
    window_nll: list[float] | None = None  # summed NLL of each window (bootstrap intervals over windows)

    @property
    def metric(self) -> str:
        if self.prefix_len is not None:
            return f"ppl/{self.dataset}@{self.prefix_len}+{self.seq_len - self.prefix_len}"
        return f"ppl/{self.dataset}@{self.seq_len}"

    def to_dict(self) -> dict:
        return asdict(self) | {"metric": self.metric}


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 4, progress: bool = True,
               desc: str = "perplexity") -> tuple[list[float], int]:
    """(summed NLL in nats of each window, predicted tokens per window) of `windows` [n, seq_len], run in
    batches on the model's device; the model's adapter says which tokens a window predicts (module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    adapter = get_adapter(model)
    device = next(model.parameters()).device
    sums, per_window = [], 0
    for start in tqdm(range(0, windows.shape[0], batch_size), desc=desc, disable=not progress):
        logits, targets = adapter.window_logits(windows[start : start + batch_size].to(device))
        # fp32 log-softmax whatever the model dtype: bf16 NLL sums drift visibly over many tokens.
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        sums += loss.view(targets.shape).double().sum(dim=1).tolist()
        per_window = targets.shape[1]
    return sums, per_window


def _limit_label(max_texts, max_windows, max_tokens) -> str | None:
    parts = [f"{k}={v}" for k, v in (("max_texts", max_texts), ("max_windows", max_windows),
                                      ("max_tokens", max_tokens)) if v is not None]
    return ",".join(parts) or None


def evaluate_perplexity(model, tokenizer, dataset: str, seq_len: int = 512, batch_size: int = 4,
               max_texts: int | None = None, max_windows: int | None = None, max_tokens: int | None = None,
               texts: Sequence[str] | None = None, progress: bool = True, scorer=None) -> PerplexityResult:
    """Perplexity of `model` on `dataset` with the official protocol. Pass `texts` to skip loading (they
    still get `dataset` as their label). `scorer(windows, desc)` → (summed NLL of each window, predicted tokens per
    window) scores the windows instead of the model's forward: another runtime on exactly these windows
    (nirvana.evaluation.llamacpp), causal windows only; `model` is then not used."""
    if texts is None:
        texts = load_texts(dataset, max_texts)
    elif max_texts is not None:
        texts = texts[:max_texts]
    windows = cut_windows(encode(texts, tokenizer), seq_len, max_windows, max_tokens)
    label = dataset_label(dataset)
    desc = f"ppl {label}@{seq_len}"
    if scorer is None:
        sums, per_window = window_nll(model, windows, batch_size, progress, desc=desc)
        prefix = get_adapter(model).window_prefix(seq_len)
    else:
        (sums, per_window), prefix = scorer(windows, desc), None
    count = per_window * len(sums)
    nll = math.fsum(sums) / count
    if not math.isfinite(nll):
        bad = [i for i, x in enumerate(sums) if not math.isfinite(x)]
        raise ValueError(f"perplexity of {label}@{seq_len}: non-finite NLL in windows {bad[:5]} (NaN/inf logits)")
    return PerplexityResult(label, seq_len, math.exp(nll), nll, windows.shape[0], count,
                            _limit_label(max_texts, max_windows, max_tokens), prefix, sums)
