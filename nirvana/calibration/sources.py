"""Where calibration text comes from — hub datasets, the offline sets, local files, saved id tensors — which
items of its source each draws on, and which texts its KL probe uses.

Hub sources (need network access to the Hugging Face hub): `bookcorpus` (the paper's default), `c4`
(allenai/c4 en, first shard), `wikitext2` (wikitext-2-raw-v1 train) and a generic `hf` (name, config,
split, field). They stay memory-mapped `datasets` tables, read one text at a time, so BookCorpus's 74M rows
never become a Python list. Offline: `lambada_tail`, `wiki_tail` (registered in nirvana.texts, each with its
own probe set), `pydoc`, `text_file`; and `tensor`, a saved LongTensor of ids.

The KL probe of a source (docs/protocol.md): for a registered set, its declared probe set; for any other
text source, its last `documents` documents, which the calibration sampler then never draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..texts import OFFLINE_SETS, Span, file_source, pydoc_texts, read_texts, text_file


class HubTexts(Sequence):
    """A lazy view of one text column of a `datasets.Dataset`."""

    def __init__(self, dataset, field: str):
        if field not in dataset.column_names:
            raise ValueError(f"text field {field!r} not in the dataset's columns {dataset.column_names}")
        self.dataset, self.field = dataset, field

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][self.field]

    def filtered(self, keep: Callable[[str], bool]) -> HubTexts:
        return HubTexts(self.dataset.filter(lambda row: keep(row[self.field])), self.field)


HUB_SOURCES = {
    # name: (load_dataset args, kwargs, text field)
    "bookcorpus": (("bookcorpus",), {"split": "train"}, "text"),
    "c4": (("allenai/c4",), {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}, "split": "train"}, "text"),
    "wikitext2": (("wikitext", "wikitext-2-raw-v1"), {"split": "train"}, "text"),
}


def hub_texts(name: str, hf_name: str | None = None, hf_config: str | None = None, split: str = "train",
              field: str = "text") -> HubTexts:
    import datasets

    if name == "hf":
        if not hf_name:
            raise ValueError("calibration source 'hf' needs calibration.hf_name (and optionally hf_config, split, field)")
        args, kwargs = ((hf_name, hf_config) if hf_config else (hf_name,)), {"split": split}
    else:
        args, kwargs, field = HUB_SOURCES[name]
    try:
        dataset = datasets.load_dataset(*args, **kwargs)
    except Exception as err:  # offline machines end here: say what to use instead
        raise RuntimeError(
            f"could not load calibration source {name!r} from the hub ({type(err).__name__}: {err}); offline, use "
            "calibration=lambada_tail, wiki_tail, text_file or tensor"
        ) from err
    return HubTexts(dataset, field)


def join_consecutive(texts: Sequence[str], group: int) -> list[str]:
    """Join every `group` consecutive passages with a blank line.

    LAMBADA passages are short (only 8 of the 2000 tail passages reach 128 SmolLM2 tokens), so the
    official one-passage-per-window sampler would never finish on them; joined in 4s they make 500
    novel excerpts of book-like text, the role BookCorpus plays in the paper.
    """
    if group < 1:
        raise ValueError(f"group must be ≥ 1, got {group}")
    return ["\n\n".join(texts[i : i + group]) for i in range(0, len(texts), group)]


OFFLINE_CALIBRATION = tuple(name for name, s in OFFLINE_SETS.items() if s.role == "calibration")
SOURCES = ("tensor", "text_file", "pydoc", "hf", *OFFLINE_CALIBRATION, *HUB_SOURCES)
# canonical names of the hub sources' items (nirvana.texts.Span)
HUB_SPAN_SOURCES = {"bookcorpus": "bookcorpus/train", "c4": "c4/en/train", "wikitext2": "wikitext/train"}


def load_texts(source: str, path: str | None = None, field: str = "text", join: int = 1,
               hf_name: str | None = None, hf_config: str | None = None, split: str = "train") -> Sequence[str]:
    """The texts of any text source (everything but `tensor`), with consecutive passages joined if asked."""
    if source not in SOURCES or source == "tensor":
        raise ValueError(f"unknown text source {source!r}; choose one of {sorted(s for s in SOURCES if s != 'tensor')}")
    if source == "text_file":
        if path is None:
            raise ValueError("calibration source 'text_file' needs calibration.path=FILE (.jsonl or .txt)")
        texts: Sequence[str] = read_texts(path, field)
    elif source in HUB_SOURCES or source == "hf":
        texts = hub_texts(source, hf_name, hf_config, split, field)
    elif source == "pydoc":
        texts = pydoc_texts()
    else:
        texts = read_texts(source)
    if join > 1:
        texts = join_consecutive(list(texts), join)
    return texts


def source_span(source: str, path: str | None = None, hf_name: str | None = None, hf_config: str | None = None,
                split: str = "train", **_) -> Span | None:
    """The items a text source is made of (None for a saved id tensor, whose text is unknown)."""
    if source in OFFLINE_SETS:
        return OFFLINE_SETS[source].span
    if source == "tensor":
        return None
    if source == "text_file":
        if path is None:
            raise ValueError("calibration source 'text_file' needs calibration.path=FILE (.jsonl or .txt)")
        return Span(file_source(text_file(path)))
    if source == "hf":
        return Span(f"hf:{hf_name}/{hf_config}/{split}")
    return Span(HUB_SPAN_SOURCES.get(source, source))


def calibration_span(source: str, documents: int, **kw) -> Span | None:
    """The items calibration windows can be drawn from: the source minus its probe."""
    span = source_span(source, **kw)
    if span is None or source in OFFLINE_SETS:
        return span
    return Span(span.source, 0, -documents)


def calibration_pool(source: str, path: str | None, field: str, join: int, documents: int,
                     **hub) -> tuple[Sequence[str], frozenset[str]]:
    """(texts the sampler draws from, texts it must redraw): a registered set is its own pool; any other source
    keeps its probe documents out — excluded by content where documents are drawn whole (so the official draws
    are kept wherever they miss the probe), cut off before joining where documents are joined."""
    if source in OFFLINE_SETS or source == "tensor":
        return load_texts(source, path, field, join, **hub), frozenset()
    if join == 1:
        probe = probe_texts(source, documents, path, field, **hub)[0]
        return load_texts(source, path, field, 1, **hub), frozenset(probe)
    texts = load_texts(source, path, field, 1, **hub)
    return join_consecutive([texts[i] for i in range(len(texts) - documents)], join), frozenset()


def probe_span(source: str, documents: int, **kw) -> Span:
    """The items of `source`'s KL probe (module docstring), without reading them."""
    if source in OFFLINE_SETS:
        return OFFLINE_SETS[OFFLINE_SETS[source].probe].span
    return Span(source_span(source, **kw).source, -documents, None)


def probe_texts(source: str, documents: int, path: str | None = None, field: str = "text",
                **hub) -> tuple[list[str], Span]:
    """(texts, identity) of the KL probe that belongs to `source` (module docstring)."""
    if source == "tensor":
        raise ValueError("a saved calibration tensor has no text to probe on: set calibration.probe.source")
    if source in OFFLINE_SETS:
        return read_texts(OFFLINE_SETS[source].probe), probe_span(source, documents)
    texts = load_texts(source, path, field, 1, **hub)
    if len(texts) <= documents:
        raise ValueError(f"calibration source {source!r} has {len(texts)} documents: none would be left for "
                         f"calibration after the probe's last {documents} (lower calibration.probe.documents)")
    return ([texts[i] for i in range(len(texts) - documents, len(texts))],
            probe_span(source, documents, path=path, **hub))


def load_id_tensor(path: str | Path) -> torch.Tensor:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"calibration tensor {path} does not exist")
    ids = torch.load(path, weights_only=True)
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{path} holds a {type(ids).__name__}, expected a LongTensor [n_samples, seq_len]")
    return ids.long()


def check_source(c) -> None:
    """Read what a calibration config (nirvana.calibration.CalibrationConfig) names, before any model is loaded: a
    missing, empty or malformed file (a bad JSONL line is named by file and line), an unknown offline set or a bad
    id tensor fails here. Hub sources are checked when loaded (they need the hub, which entry points check first)."""
    if c.source == "tensor":
        ids = load_id_tensor(c.path or "")
        if ids.ndim != 2 or ids.numel() == 0:
            raise ValueError(f"calibration tensor {c.path} has shape {tuple(ids.shape)}; "
                             "expected a non-empty [n_samples, seq_len]")
        return
    if c.source in HUB_SOURCES or c.source == "hf":
        return
    texts = load_texts(c.source, c.path, c.field)
    if not any(t.strip() for t in texts):
        raise ValueError(f"calibration source {c.source!r} ({c.path or 'offline set'}) holds no text")
