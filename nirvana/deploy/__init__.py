"""Deploying a pruned model outside transformers: a `deci` GGUF that llama.cpp runs (docs/deploy.md).

    from nirvana.deploy import export_gguf
    result = export_gguf(model, tokenizer, "model.gguf", "q8_0")   # f32 | f16 | q8_0 | q4_k_m
    result.fallbacks   # matrices the quantizer had to store in another type (row lengths off its block)

`export` writes the file (the `gguf` package; quantized types through llama.cpp's own quantizer), `vocab` the
tokenizer's metadata, `runtime` loads and runs GGUFs with llama-cpp-python (the opt-in extra: `make
setup-llamacpp`), `server` starts its OpenAI-compatible server.
"""

from .export import (
    GGUF_TYPES,
    ExportResult,
    check_export,
    check_gguf_type,
    export_gguf,
    row_lengths_off_block,
)

__all__ = ["GGUF_TYPES", "ExportResult", "check_export", "check_gguf_type", "export_gguf", "row_lengths_off_block"]
