"""The source model's tokenizer as GGUF metadata (`tokenizer.ggml.*`), so llama.cpp tokenizes text as transformers does.

Byte-level BPE tokenizers only (GPT-2 style: SmolLM2, Qwen2, Llama 3), which GGUF calls the `gpt2` tokenizer
model: the token list in id order (ids the tokenizer does not use, up to the embedding's rows, become unused
`[PAD<i>]` tokens), each token's type, the merges, the special token ids and the chat template — the last three
read by the `gguf` package's own `SpecialVocab`, as llama.cpp's converter does.

llama.cpp does not run a tokenizer.json: it names its pre-tokenizer (how text is split before BPE) with a short
string, `tokenizer.ggml.pre`. llama.cpp's converter finds that name from a hash of the tokenization of a test text,
kept in a table per released model; we read the pre-tokenizer itself instead (`llama_cpp_pre`), because the same
model family can ship different pre-tokenizers (this project's SmolLM2 asset splits no digits, the hub's SmolLM2
does) and a name from the model's family would then tokenize numbers differently. Whatever is not one of the
splits below is refused, naming it; the parity tests compare llama.cpp's tokenization with transformers' on text.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gguf

# The GPT-2 split and two refinements of it, as tokenizer.json writes their regexes; each is the pre-tokenizer of
# llama.cpp's name next to it (src/llama-vocab.cpp lists the regex of every name).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# normalizers llama.cpp may ignore: none, or NFC (Qwen2's, which llama.cpp's own converter ignores too: text that is
# already NFC — nearly all text — tokenizes the same)
IGNORABLE_NORMALIZERS = (None, "NFC")


def _describe(step: dict | None) -> str:
    if step is None:
        return "none"
    fields = {k: v for k, v in step.items() if k not in ("type", "trim_offsets")}
    return f"{step.get('type')}({json.dumps(fields, ensure_ascii=False)[1:-1]})"


def llama_cpp_pre(spec: dict) -> str:
    """llama.cpp's name for the pre-tokenizer of a tokenizer.json (`spec`); a ValueError names any other."""
    pre = spec.get("pre_tokenizer")
    steps = pre["pretokenizers"] if pre and pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") if s else None for s in steps]

    def byte_level(regex: bool) -> bool:
        last = steps[-1] or {}
        return last.get("type") == "ByteLevel" and bool(last.get("use_regex", True)) == regex

    split = steps[0].get("pattern", {}).get("Regex") if kinds[0] == "Split" else None
    if kinds == ["ByteLevel"] and byte_level(True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level(True):
        return "smollm"  # GPT-2's split after splitting every digit apart
    if kinds == ["Split", "ByteLevel"] and byte_level(False) and steps[0].get("behavior") == "Isolated":
        if split == QWEN2_SPLIT:
            return "qwen2"
        if split == LLAMA3_SPLIT:
            return "llama-bpe"
    raise ValueError("the tokenizer's pre-tokenizer [" + ", ".join(_describe(s) for s in steps) + "] is none that "
                     "llama.cpp names (exportable: GPT-2's byte-level split, with individual digits (smollm), Qwen2's "
                     "or Llama 3's split regex); llama.cpp would split text differently from transformers")


def check_tokenizer(tokenizer) -> dict:
    """The tokenizer.json of a byte-level BPE fast tokenizer, checked for export (ValueError: why not)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} is not a fast (tokenizers) tokenizer: export needs "
                         "its tokenizer.json")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError(f"tokenizer model {model.get('type')!r} with decoder {_describe(spec.get('decoder'))}: only "
                         "byte-level BPE tokenizers (GGUF's `gpt2` model) are exported")
    normalizer = (spec.get("normalizer") or {}).get("type")
    if normalizer not in IGNORABLE_NORMALIZERS:
        raise ValueError(f"tokenizer normalizer {_describe(spec.get('normalizer'))}: llama.cpp applies none")
    llama_cpp_pre(spec)
    return spec


def token_table(tokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    """(token strings, GGUF token types) for ids 0..n_vocab−1, as llama.cpp's converter builds them: special added
    tokens are CONTROL, other added tokens USER_DEFINED, ids without a token UNUSED `[PAD<i>]`, the rest NORMAL."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= n_vocab:
        raise ValueError(f"the tokenizer has token id {max(by_id)} but the model's embedding only {n_vocab} rows")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _adds(tokenizer, token_id: int | None, at_start: bool) -> bool:
    """Whether the tokenizer puts `token_id` around plain text by itself (BOS first / EOS last)."""
    if token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0 if at_start else -1] == token_id and ids != tokenizer("a", add_special_tokens=False)[
        "input_ids"]


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, n_vocab: int) -> str:
    """Write the tokenizer's metadata; returns llama.cpp's pre-tokenizer name."""
    spec = check_tokenizer(tokenizer)
    pre = llama_cpp_pre(spec)
    tokens, types = token_table(tokenizer, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # SpecialVocab reads a tokenizer folder: merges (both tokenizer.json formats), special ids, chat template
    with tempfile.TemporaryDirectory(prefix="nirvana-vocab-") as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(Path(folder), load_merges=True, n_vocab=n_vocab)
    # Whether BOS/EOS are added is what the tokenizer DOES (its post-processor), not what its config says
    special.add_special_token = {"bos": _adds(tokenizer, tokenizer.bos_token_id, True),
                                 "eos": _adds(tokenizer, tokenizer.eos_token_id, False)}
    special.add_to_gguf(writer, quiet=True)
    return pre
