"""The deploy stage and the export entry point, typed (conf/deploy/*.yaml, conf/export.yaml; registered with Hydra by
nirvana.config)."""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import unhashed
from .export import check_gguf_type


def _threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be ≥ 1 or null, got {threads!r}")


@dataclass
class DeployConfig:
    """After pruning (and recovery): export a `deci` GGUF and evaluate it as llama.cpp runs it."""

    name: str = "llamacpp"
    type: str = "f16"  # f32 | f16 | q8_0 | q4_k_m (the last two by llama.cpp's own quantizer)
    # Never in a run id: llama.cpp's logits are bit-for-bit the same at 1 and 2 threads, exact or not (SmolLM2,
    # f32 and Q8_0, 512 tokens; docs/deploy.md), and keeping the file changes no number.
    threads: int | None = unhashed(None)  # llama.cpp threads (None: every core this process may use)
    exact: bool = True  # f32 KV cache without flash attention: only the GGUF type differs from transformers
    keep: bool = unhashed(False)  # keep model.gguf in the run folder (it is as large as the model)

    def __post_init__(self) -> None:
        check_gguf_type(self.type)
        _threads(self.threads)


FORMATS = ("gguf",)


@dataclass
class ExportSettings:
    """What `experiments.export` writes (the model itself is conf/export.yaml's `model`)."""

    format: str = "gguf"  # the only format so far
    dtype: str = "f16"  # f32 | f16 | q8_0 | q4_k_m
    out: str | None = None  # the .gguf file; null → model-<dtype>.gguf in the run folder
    overwrite: bool = False  # replace an existing `out`
    threads: int | None = None  # quantizer / llama.cpp threads (null: every core this process may use)
    check: bool = False  # also compare llama.cpp's logits with transformers' on fixed prompts (summary: parity)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format={self.format!r}: choose one of {list(FORMATS)}")
        check_gguf_type(self.dtype)
        _threads(self.threads)
