"""llama.cpp through llama-cpp-python (the opt-in extra `make setup-llamacpp` builds): load a GGUF, its logits on
token ids, greedy decoding, and llama.cpp's own quantizer.

Only public llama-cpp-python API: `llama_cpp.Llama` (eval, scores, reset) and the C API it binds
(`llama_model_quantize`). The package is imported lazily, so everything else in nirvana works without it; `require()`
says how to install it.

Two settings (`load(..., exact=...)`):
  - exact (the default; parity tests, perplexity): an f32 KV cache and NO flash attention. llama.cpp's default f16
    cache moves logits by 1e-2–1e-1, and so does its CPU flash-attention kernel even over an f32 cache (it computes
    in f16: measured on a tiny model, max |Δlogit| 1.3e-2 with flash attention over either cache, 1.4e-5 without
    it over an f32 cache). Without flash attention llama.cpp pads every layer's V cache to the widest layer's
    width (memory only; the values are exact).
  - deployment (exact=False; speed, serving): llama.cpp's defaults — f16 KV cache — with flash attention, which
    keeps each layer's V cache at its own width.
Logits are returned for every position of the ids.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from pathlib import Path

import numpy as np

INSTALL_HINT = ("llama-cpp-python is not installed: `make setup-llamacpp` builds it from source into .venv "
                "(minutes; docs/deploy.md)")
# llama.cpp's quantizer types by the names nirvana.deploy.export uses (llama_ftype in llama.h)
FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def require():
    """The llama_cpp module, or a RuntimeError that says how to install it."""
    try:
        import llama_cpp
    except ImportError as e:
        raise RuntimeError(INSTALL_HINT) from e
    return llama_cpp


def version() -> str | None:
    return require().__version__ if available() else None


@contextlib.contextmanager
def _silenced():
    """llama.cpp's quantizer logs a warning line per fallback tensor (hundreds for SmolLM2's Q4_K_M); the export
    reports them itself (ExportResult.fallbacks). llama-cpp-python forwards llama.cpp's log through this logger and
    maps llama.cpp's warnings to ERROR (its level table predates ggml's current enum), so only CRITICAL hides them;
    failures still surface as return codes."""
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def quantize(source: str | os.PathLike, target: str | os.PathLike, gguf_type: str, n_threads: int | None = None) -> Path:
    """Quantize an f32/f16 GGUF with llama.cpp's own quantizer (llama_model_quantize, as `llama-quantize` does)."""
    if gguf_type not in FTYPES:
        raise ValueError(f"llama.cpp quantization type {gguf_type!r}: choose one of {list(FTYPES)}")
    llama_cpp = require()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[gguf_type])
    params.nthread = n_threads or default_threads()
    with _silenced():
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {gguf_type} (llama_model_quantize returned {code})")
    return Path(target)


def load(path: str | os.PathLike, n_ctx: int = 512, n_threads: int | None = None, exact: bool = True,
         logits_all: bool = True, n_batch: int | None = None):
    """A llama_cpp.Llama on `path` for sequences up to `n_ctx` tokens. `exact`: f32 KV cache without flash attention;
    False: f16 cache with flash attention (module docstring). `logits_all`: keep every position's logits
    (perplexity, parity) — a [n_ctx, vocab] float32 buffer."""
    llama_cpp = require()
    if not Path(path).is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be ≥ 1, got {n_ctx}")
    threads = n_threads or default_threads()
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if exact else {}
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch or n_ctx, n_ubatch=n_batch or n_ctx,
                           n_threads=threads, n_threads_batch=threads, logits_all=logits_all, flash_attn=not exact,
                           verbose=False, **cache)


def logits(llm, ids) -> np.ndarray:
    """[len(ids), vocab] float32 logits of a fresh sequence (no cache kept from an earlier call)."""
    ids = [int(i) for i in ids]
    if len(ids) > llm.n_ctx():
        raise ValueError(f"{len(ids)} tokens exceed the context of {llm.n_ctx()} the model was loaded with")
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def greedy(llm, ids, new_tokens: int) -> list[int]:
    """`new_tokens` greedy (argmax) continuations of `ids`, one token per step through the KV cache, as
    transformers' `generate(do_sample=False)` does; no early stop."""
    ids = [int(i) for i in ids]
    if len(ids) + new_tokens > llm.n_ctx():
        raise ValueError(f"{len(ids)} + {new_tokens} tokens exceed the context of {llm.n_ctx()}")
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(new_tokens):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def tokenize(llm, text: str, add_special: bool = True) -> list[int]:
    """llama.cpp's tokenization of `text` (special-token strings parsed as special tokens, as transformers does)."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))
