"""Instruction data for LoRA recovery: alpaca-cleaned (the official data) or an offline stand-in, tokenized with
the loss on the response only, and the collator that pads it.

The official protocol (the NIRVANA code follows LLM-Pruner's `post_training.py`, itself alpaca-lora's): the
Alpaca prompt template, texts cut at `cutoff` tokens, EOS appended, `yahma/alpaca-cleaned` with 2,000 examples
held out by datasets' seeded `train_test_split(test_size=2000, shuffle=True, seed=42)`.

Offline stand-in (`source="local"`): without the hub there is no alpaca-cleaned, so instruction examples are
built from local passages: instruction "Continue the text:", input = the first half of a passage's words,
response = the rest. A language-modelling signal in instruction clothing, NOT the paper's data: for demos and
tests, never for numbers compared with the paper.

Encoder–decoders (T5): the prompt is the encoder input and the response the decoder's labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..texts import read_jsonl_texts, text_file

ALPACA_DATASET = "yahma/alpaca-cleaned"
# alpaca-lora's templates/alpaca.json, which LLM-Pruner and the official NIRVANA code use
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
LOCAL_INSTRUCTION = "Continue the text:"
IGNORE = -100  # label of tokens that carry no loss


def alpaca_prompt(instruction: str, input: str = "", output: str = "") -> str:
    """The Alpaca template; with `output` empty it is the prompt the response is conditioned on."""
    template = ALPACA_PROMPT_INPUT if input else ALPACA_PROMPT_NO_INPUT
    return template.format(instruction=instruction, input=input) + output


def load_alpaca(dataset: str = ALPACA_DATASET, split: str = "train", max_examples: int | None = None):
    """alpaca-cleaned (instruction / input / output) through `datasets`, as a `datasets.Dataset`."""
    import datasets

    try:
        data = datasets.load_dataset(dataset, split=split)
    except Exception as e:  # offline machines end here; say what to use instead
        raise RuntimeError(
            f"could not load {dataset} [{split}] for LoRA recovery ({type(e).__name__}: {e}). Without the hub, "
            "use the offline stand-in: recovery=lora_offline (or recovery.data.source=local)"
        ) from e
    missing = {"instruction", "input", "output"} - set(data.column_names)
    if missing:
        raise ValueError(f"{dataset} lacks the Alpaca columns {sorted(missing)} (has {data.column_names})")
    if max_examples is not None:
        data = data.select(range(min(max_examples, len(data))))
    return data


def local_examples(files: Sequence[str] = ("lambada_tail",), instruction: str = LOCAL_INSTRUCTION,
                   input_fraction: float = 0.5, min_words: int = 16, max_examples: int | None = None) -> list[dict]:
    """The offline stand-in: each passage (a registered text set's name, or a JSONL file with a "text" field)
    of at least `min_words` words becomes {instruction, input: its first `input_fraction` of words, output: the
    rest}."""
    if not 0.0 < input_fraction < 1.0:
        raise ValueError(f"input_fraction must lie in (0, 1), got {input_fraction}")
    out = []
    for name in files:
        for text in read_jsonl_texts(text_file(name)):
            words = text.split()
            if len(words) < min_words:
                continue
            cut = max(1, int(len(words) * input_fraction))
            out.append({"instruction": instruction, "input": " ".join(words[:cut]), "output": " ".join(words[cut:])})
            if max_examples is not None and len(out) >= max_examples:
                return out
    if not out:
        raise ValueError(f"no passage of ≥ {min_words} words in {list(files)}")
    return out


def load_examples(source: str = "alpaca", dataset: str = ALPACA_DATASET, max_examples: int | None = None,
                  files: Sequence[str] = ("lambada_tail",), instruction: str = LOCAL_INSTRUCTION,
                  input_fraction: float = 0.5, **_ignored):
    """Instruction examples: `alpaca` (the hub) or `local` (the offline stand-in)."""
    if source == "alpaca":
        return load_alpaca(dataset, max_examples=max_examples)
    if source == "local":
        return local_examples(files, instruction, input_fraction, max_examples=max_examples)
    raise ValueError(f"unknown recovery data source {source!r}: choose alpaca (hub) or local (offline stand-in)")


def check_source(data) -> None:
    """What a data config (nirvana.recovery.config.RecoveryDataConfig) names exists, before any model is loaded."""
    if data.source == "local":
        for name in data.files:
            text_file(name)  # raises, naming the path, when missing


def split_train_val(examples, val_set_size: int, seed: int = 42) -> tuple[list[dict], list[dict]]:
    """Hold out `val_set_size` examples exactly as the official script does (datasets' seeded
    `train_test_split`), so the same alpaca examples end up in validation."""
    import datasets

    data = examples if isinstance(examples, datasets.Dataset) else datasets.Dataset.from_list(list(examples))
    if val_set_size == 0:
        return data.to_list(), []
    if val_set_size >= len(data):
        raise ValueError(f"val_set_size={val_set_size} leaves no training example (the data has {len(data)})")
    split = data.train_test_split(test_size=val_set_size, shuffle=True, seed=seed)
    return split["train"].to_list(), split["test"].to_list()


def tokenize_example(tokenizer, example: dict, cutoff: int, train_on_inputs: bool = False,
                     seq2seq: bool = False) -> dict[str, list[int]]:
    """Decoder-only: the full text (prompt + response) cut at `cutoff` tokens, EOS appended when there is room;
    with `train_on_inputs=False` the prompt's tokens get label -100 (counted by tokenizing the prompt alone, as
    the official script does). Seq2seq: input_ids = the prompt, labels = the response (each cut at `cutoff`)."""
    prompt = alpaca_prompt(example["instruction"], example.get("input") or "")
    if seq2seq:
        ids = tokenizer(prompt, truncation=True, max_length=cutoff)["input_ids"]
        labels = tokenizer(example["output"], truncation=True, max_length=cutoff)["input_ids"]
        return {"input_ids": ids, "labels": labels}
    ids = tokenizer(prompt + example["output"], truncation=True, max_length=cutoff)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos) and len(ids) < cutoff:
        ids = ids + [eos]
    labels = list(ids)
    if not train_on_inputs:
        n_prompt = len(tokenizer(prompt, truncation=True, max_length=cutoff)["input_ids"])
        labels = [IGNORE] * n_prompt + labels[n_prompt:]
    return {"input_ids": ids, "labels": labels}


def tokenize_examples(tokenizer, examples: Sequence[dict], cutoff: int, train_on_inputs: bool = False,
                      progress: bool = False, seq2seq: bool = False) -> tuple[list[dict], int]:
    """(tokenized examples, number dropped because no response token survived the cutoff)."""
    out, dropped = [], 0
    first_predicted = 0 if seq2seq else 1  # a causal LM never predicts its first token
    for ex in tqdm(examples, desc="tokenize", disable=not progress):
        t = tokenize_example(tokenizer, ex, cutoff, train_on_inputs, seq2seq)
        if any(label != IGNORE for label in t["labels"][first_predicted:]):
            out.append(t)
        else:
            dropped += 1
    return out, dropped


def pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


class Collator:
    """Right-padded LongTensors input_ids / attention_mask / labels (padding carries no loss); seq2seq labels are
    padded on their own. Right padding: the official collator pads on the left, which shifts the positions of
    short examples."""

    def __init__(self, pad: int):
        self.pad = pad

    def __call__(self, batch: Sequence[dict]) -> dict[str, torch.Tensor]:
        def padded(key: str, fill: int) -> torch.Tensor:
            width = max(len(b[key]) for b in batch)
            out = torch.full((len(batch), width), fill, dtype=torch.long)
            for i, b in enumerate(batch):
                out[i, : len(b[key])] = torch.tensor(b[key], dtype=torch.long)
            return out

        ids = padded("input_ids", self.pad)
        mask = torch.zeros_like(ids)
        for i, b in enumerate(batch):
            mask[i, : len(b["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": padded("labels", IGNORE)}
