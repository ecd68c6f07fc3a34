"""A pruned (or dense) decoder as a GGUF file that llama.cpp runs: architecture `deci`, one width per layer.

Why `deci`: llama.cpp's `llama` architecture reads ONE head count and ONE MLP width for all layers, so a model whose
layers kept different numbers of GQA groups and neurons cannot be described by it. Its `deci` architecture (written
for Llama-3.1-Nemotron-51B, src/models/deci.cpp) is the same Llama block — RMSNorm, rotary attention, SwiGLU — but
reads `deci.attention.head_count`, `deci.attention.head_count_kv` and `deci.feed_forward_length` as per-layer arrays
and builds every layer with its own widths. What the file holds, beyond the usual Llama keys:
  - the three per-layer arrays, from the adapter's LlamaLayout (nirvana.adapters);
  - `deci.attention.key_length` / `value_length` = head_dim, written explicitly: without them llama.cpp derives the
    head size from layer 0's head count (hidden / n_head), which pruning changed;
  - q and k rows permuted from transformers' rotate-half RoPE layout to llama.cpp's interleaved one, head by head
    with each LAYER's own head count (as llama.cpp's converter permutes with the model's one count);
  - no `output.weight` when the embeddings are tied (llama.cpp then reuses `token_embd.weight`);
  - the source tokenizer (nirvana.deploy.vocab), so llama.cpp tokenizes as transformers does;
  - the biases the layers have: Qwen2's q/k/v biases and FLAP's compensation biases on the attention and MLP outputs
    (`deci` creates and adds all of them when present).
Tensor names come from the `gguf` package's own transformers → GGUF map for `deci`; a parameter it cannot name is
refused, not dropped. Layers with 0 query heads are written as llama.cpp's attention-free layers (no attention
tensors, no attention norm). A layer with an MLP of width 0 but attention is refused: `deci` skips the rest of such
a layer, attention output included (`if (n_ff == 0) continue;` before the residual add).

Types: f32 and f16 are written here (norms and biases stay f32, as llama.cpp's converter keeps them); q8_0 and q4_k_m
are made from the f32 file by llama.cpp's own quantizer (nirvana.deploy.runtime.quantize), which falls back to another
type for a matrix whose rows (input features) are not a multiple of the type's block: 32 values for Q8_0, 256 for the
k-quants. `ExportResult.fallbacks` lists those tensors; `pruner.round_to=32` (or 256) avoids them in the MLP
(docs/deploy.md).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from ..adapters import LlamaLayout, get_adapter
from ..atomic import atomic_path
from . import runtime
from .vocab import add_tokenizer, check_tokenizer

ARCH = gguf.MODEL_ARCH.DECI
# the file types this exporter writes; quantized ones by llama.cpp's quantizer from an f32 file
FLOAT_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
QUANTIZED_TYPES = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}
GGUF_TYPES = (*FLOAT_TYPES, *QUANTIZED_TYPES)
# the tensor types each file type is meant to hold for its matrices (anything else there is a fallback)
INTENDED = {"f32": {"F32"}, "f16": {"F16"}, "q8_0": {"Q8_0"}, "q4_k_m": {"Q4_K", "Q5_K", "Q6_K"}}
# values per quantization block along a matrix row: what a row length must be a multiple of to avoid a fallback
BLOCK = {"f32": 1, "f16": 1, "q8_0": 32, "q4_k_m": 256}
ATTENTION = (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K, gguf.MODEL_TENSOR.ATTN_V, gguf.MODEL_TENSOR.ATTN_OUT,
             gguf.MODEL_TENSOR.ATTN_NORM)
MLP = (gguf.MODEL_TENSOR.FFN_GATE, gguf.MODEL_TENSOR.FFN_UP, gguf.MODEL_TENSOR.FFN_DOWN, gguf.MODEL_TENSOR.FFN_NORM)


def check_gguf_type(gguf_type: str) -> None:
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"GGUF type {gguf_type!r}: choose one of {list(GGUF_TYPES)}")


def check_layout(layout: LlamaLayout) -> None:
    """Refuse what the `deci` graph would compute differently from the model, naming it."""
    if layout.differences:
        raise ValueError("the model is not a stack of Llama blocks as llama.cpp's `deci` computes them: "
                         + "; ".join(layout.differences))
    for i, (q, kv, ffn) in enumerate(zip(layout.query_heads, layout.kv_heads, layout.ffn_widths)):
        if (q == 0) != (kv == 0) or (kv and q % kv):
            raise ValueError(f"layer {i}: {q} query heads over {kv} KV heads (need a multiple, or both 0)")
        if ffn == 0 and q > 0:
            raise ValueError(f"layer {i} keeps attention ({q} heads) but no MLP neuron: llama.cpp's `deci` graph skips "
                             "the rest of a layer whose feed_forward_length is 0, its attention output included")


def permute_rotary(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """transformers' rotate-half RoPE pairs dimension j with j + head_dim/2 of each head; llama.cpp's `deci` (plain
    RoPE) pairs 2j with 2j+1. Reorder each head's rows so that both rotate the same pairs (llama.cpp's converter,
    LlamaModel.permute, with this layer's head count)."""
    if n_heads == 0:
        return rows
    shape = rows.shape
    return rows.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


@torch.no_grad()
def deci_tensors(model, layout: LlamaLayout | None = None) -> dict[str, np.ndarray]:
    """Every weight of `model` under its GGUF name, as float32 arrays, q/k rows permuted, tied output left out,
    empty tensors (a layer's attention with 0 heads) left out."""
    layout = layout or get_adapter(model).llama_layout()
    names = gguf.get_tensor_name_map(ARCH, layout.n_layers)
    out, unnamed = {}, []
    for name, tensor in model.state_dict().items():
        found = names.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
        if found is None:
            unnamed.append(name)
            continue
        kind, gguf_name = found
        if kind == gguf.MODEL_TENSOR.OUTPUT and layout.tied_embeddings:
            continue  # llama.cpp reuses token_embd.weight when output.weight is absent
        if tensor.numel() == 0:
            continue
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if name in layout.rotary_rows:
            array = permute_rotary(array, layout.rotary_rows[name])
        out[gguf_name] = array
    if unnamed:
        raise ValueError(f"no GGUF `deci` name for the model's parameters {unnamed[:6]}"
                         f"{' …' if len(unnamed) > 6 else ''}: refusing to drop them")
    return out


def _expected_shape(kind, layer: int, layout: LlamaLayout) -> tuple[int, ...] | None:
    """(rows, columns) a layer matrix must have (numpy order: output features first); None: not a layer matrix."""
    d, hd = layout.hidden_size, layout.head_dim
    q, kv, ffn = layout.query_heads[layer] * hd, layout.kv_heads[layer] * hd, layout.ffn_widths[layer]
    return {gguf.MODEL_TENSOR.ATTN_Q: (q, d), gguf.MODEL_TENSOR.ATTN_K: (kv, d), gguf.MODEL_TENSOR.ATTN_V: (kv, d),
            gguf.MODEL_TENSOR.ATTN_OUT: (d, q), gguf.MODEL_TENSOR.FFN_GATE: (ffn, d),
            gguf.MODEL_TENSOR.FFN_UP: (ffn, d), gguf.MODEL_TENSOR.FFN_DOWN: (d, ffn)}.get(kind)


def layer_tensors(tensors: dict[str, np.ndarray], layout: LlamaLayout) -> dict[str, np.ndarray]:
    """The tensors `deci` loads for `layout`: every layer matrix checked against the layer's widths, and the
    attention (MLP) tensors of attention-free (MLP-free) layers dropped — `deci` reads none there and refuses a file
    with tensors it did not read."""
    kinds = {}
    for i in range(layout.n_layers):
        for kind in (*ATTENTION, *MLP):
            for suffix in ("weight", "bias"):
                kinds[f"{gguf.TENSOR_NAMES[kind].format(bid=i)}.{suffix}"] = (kind, i)
    out = {}
    for name, array in tensors.items():
        if name not in kinds:
            out[name] = array
            continue
        kind, i = kinds[name]
        if (kind in ATTENTION and layout.query_heads[i] == 0) or (kind in MLP and layout.ffn_widths[i] == 0):
            continue
        expected = _expected_shape(kind, i, layout)
        if expected is not None and name.endswith(".weight") and tuple(array.shape) != expected:
            raise ValueError(f"{name} has shape {tuple(array.shape)}, but layer {i}'s widths (heads "
                             f"{layout.query_heads[i]}/{layout.kv_heads[i]}, MLP {layout.ffn_widths[i]}) need {expected}")
        out[name] = array
    return out


def write_deci(path: str | os.PathLike, layout: LlamaLayout, tensors: dict[str, np.ndarray], tokenizer,
               float_type: str = "f32", name: str = "nirvana", progress: bool = False) -> Path:
    """Write a float `deci` GGUF (f32 or f16 matrices) atomically: a crash leaves no partial file at `path`."""
    if float_type not in FLOAT_TYPES:
        raise ValueError(f"write_deci writes float files: float_type must be one of {list(FLOAT_TYPES)}, got "
                         f"{float_type!r}")
    check_layout(layout)
    tensors = layer_tensors(tensors, layout)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[ARCH])
    writer.add_name(name)
    writer.add_file_type(FLOAT_TYPES[float_type])
    writer.add_block_count(layout.n_layers)
    writer.add_context_length(layout.context_length)
    writer.add_embedding_length(layout.hidden_size)
    writer.add_feed_forward_length(list(layout.ffn_widths))
    writer.add_head_count(list(layout.query_heads))
    writer.add_head_count_kv(list(layout.kv_heads))
    writer.add_key_length(layout.head_dim)
    writer.add_value_length(layout.head_dim)
    writer.add_rope_dimension_count(layout.head_dim)
    writer.add_rope_freq_base(layout.rope_theta)
    writer.add_layer_norm_rms_eps(layout.norm_eps)
    writer.add_vocab_size(layout.vocab_size)
    add_tokenizer(writer, tokenizer, layout.vocab_size)
    if layout.rope_factors is not None:
        tensors[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"] = np.asarray(layout.rope_factors,
                                                                                            dtype=np.float32)
    for tensor_name, array in tensors.items():
        # matrices in the file's type; vectors (norms, biases, rope factors) in f32, as llama.cpp expects them
        half = float_type == "f16" and array.ndim == 2
        writer.add_tensor(tensor_name, np.ascontiguousarray(array, dtype=np.float16 if half else np.float32))
    path = Path(path)
    with atomic_path(path) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
    return path


@dataclass
class ExportResult:
    path: Path
    gguf_type: str
    bytes: int
    layout: LlamaLayout
    tensor_types: dict[str, str]  # GGUF tensor name → its ggml type (F32, F16, Q8_0, Q4_K, …)
    # matrices stored in another type than the file type intends (the quantizer's fallbacks): name → type
    fallbacks: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for t in self.tensor_types.values():
            counts[t] = counts.get(t, 0) + 1
        return {"path": str(self.path), "gguf_type": self.gguf_type, "bytes": self.bytes, "tensor_types": counts,
                "fallbacks": self.fallbacks, "seconds": round(self.seconds, 2),
                "query_heads": self.layout.query_heads, "kv_heads": self.layout.kv_heads,
                "ffn_widths": self.layout.ffn_widths}


def read_tensor_types(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """GGUF tensor name → (ggml type name, shape in GGUF order: row length first) of a GGUF file."""
    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape)) for t in reader.tensors}


def fallbacks(types: dict[str, tuple[str, tuple[int, ...]]], gguf_type: str) -> dict[str, str]:
    """The matrices (token embedding and output head included) not stored in a type `gguf_type` intends."""
    return {name: t for name, (t, shape) in types.items() if len(shape) == 2 and t not in INTENDED[gguf_type]}


def check_export(gguf_type: str, path: str | os.PathLike, overwrite: bool = False) -> None:
    """What an export request can get wrong before any model is loaded: the type, an existing file, and llama.cpp
    itself for the quantized types."""
    check_gguf_type(gguf_type)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another path, or overwrite=true to replace it")
    if path.suffix != ".gguf":
        raise ValueError(f"{path}: a GGUF file name ends in .gguf")
    if gguf_type in QUANTIZED_TYPES:
        runtime.require()  # quantizing needs llama.cpp itself


def export_gguf(model, tokenizer, path: str | os.PathLike, gguf_type: str = "f32", n_threads: int | None = None,
                overwrite: bool = False, name: str = "nirvana", progress: bool = False) -> ExportResult:
    """Export `model` (a transformers decoder, pruned or dense) and its tokenizer as a `deci` GGUF of `gguf_type`
    at `path`. Everything that can be refused is refused before a tensor is converted."""
    t0 = time.perf_counter()
    check_export(gguf_type, path, overwrite)
    path = Path(path)
    layout = get_adapter(model).llama_layout()
    check_layout(layout)
    check_tokenizer(tokenizer)
    tensors = deci_tensors(model, layout)
    if gguf_type in FLOAT_TYPES:
        write_deci(path, layout, tensors, tokenizer, gguf_type, name, progress)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".nirvana-f32-", dir=path.parent) as scratch:  # an intermediate
            source = write_deci(Path(scratch) / "f32.gguf", layout, tensors, tokenizer, "f32", name, progress)
            del tensors
            with atomic_path(path) as tmp:
                runtime.quantize(source, tmp, gguf_type, n_threads)
    types = read_tensor_types(path)
    return ExportResult(path, gguf_type, path.stat().st_size, layout, {n: t for n, (t, _) in types.items()},
                        fallbacks(types, gguf_type), time.perf_counter() - t0)


def row_lengths_off_block(layout: LlamaLayout, gguf_type: str) -> dict[str, int]:
    """Which matrices of `layout` have rows (input features) that are not a multiple of `gguf_type`'s block — the
    ones llama.cpp's quantizer stores in a fallback type — by GGUF name → row length. Known before exporting."""
    check_gguf_type(gguf_type)
    block, out = BLOCK[gguf_type], {}
    for i in range(layout.n_layers):
        q, ffn = layout.query_heads[i] * layout.head_dim, layout.ffn_widths[i]
        rows = {gguf.MODEL_TENSOR.ATTN_Q: layout.hidden_size, gguf.MODEL_TENSOR.ATTN_K: layout.hidden_size,
                gguf.MODEL_TENSOR.ATTN_V: layout.hidden_size, gguf.MODEL_TENSOR.ATTN_OUT: q,
                gguf.MODEL_TENSOR.FFN_GATE: layout.hidden_size, gguf.MODEL_TENSOR.FFN_UP: layout.hidden_size,
                gguf.MODEL_TENSOR.FFN_DOWN: ffn}
        for kind, length in rows.items():
            if length and length % block:
                out[f"{gguf.TENSOR_NAMES[kind].format(bid=i)}.weight"] = length
    return out


__all__ = ["GGUF_TYPES", "ExportResult", "check_export", "check_gguf_type", "deci_tensors", "export_gguf", "fallbacks",
           "permute_rotary", "read_tensor_types", "row_lengths_off_block", "write_deci"]
