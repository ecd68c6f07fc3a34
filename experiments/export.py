"""Export a model (a pruned checkpoint, or a dense model) as a `deci` GGUF that llama.cpp runs.

    python -m experiments.export model.path=CHECKPOINT_DIR format=gguf dtype=q8_0
    python -m experiments.export model=smollm2_135m dtype=f16 out=smollm2-f16.gguf
    python -m experiments.export model.path=CHECKPOINT_DIR dtype=f32 check=true   # + logit parity with transformers

The model loads in float32 on the CPU whatever its config says (the GGUF's types are `dtype`'s). The run folder gets
`summary.json`: the file, its tensor types, the per-layer widths, the matrices llama.cpp's quantizer had to store in a
fallback type (docs/deploy.md says how `pruner.round_to` avoids them) and, with `check=true`, llama.cpp's logits against
transformers' on fixed prompts (nirvana.deploy.parity; needs the extra). Serve the file with
`python -m llama_cpp.server --model FILE` (docs/deploy.md).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nirvana.atomic import write_json
from nirvana.config import ExportConfig, typed
from nirvana.deploy import check_export, export_gguf, runtime
from nirvana.deploy.parity import logit_parity
from nirvana.models import load_from_config

log = logging.getLogger("experiments.export")


def run_export(c: ExportConfig, out_dir: str | Path) -> dict:
    folder = c.model.path
    if folder and not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(f"model.path={folder}: not a checkpoint folder (no config.json there)")
    path = Path(c.out or Path(out_dir) / f"model-{c.dtype}.gguf")
    check_export(c.dtype, path, c.overwrite)  # a typo or a missing llama.cpp must not cost a model load
    if c.check:
        runtime.require()
    model, tokenizer = load_from_config(dataclasses.replace(c.model, dtype="float32", device="cpu", device_map=None))
    result = export_gguf(model, tokenizer, path, c.dtype, c.threads, overwrite=c.overwrite, name=c.model.name,
                         progress=True)
    summary = result.summary()
    if c.check:
        summary["parity"] = logit_parity(model, tokenizer, path, n_threads=c.threads)
        p = summary["parity"]
        log.info("llama.cpp vs transformers: max |Δlogit| %.2e, argmax agreement %.4f, %d greedy tokens equal: %s",
                 p["max_abs_logit_difference"], p["argmax_agreement"], p["new_tokens"], p["greedy_equal"])
    write_json(Path(out_dir) / "summary.json", summary)
    log.info("%s → %s (%.1f MiB, %s)", c.model.path or c.model.name_or_path, path,
             result.bytes / 2**20, ", ".join(f"{n} {t}" for t, n in sorted(summary["tensor_types"].items())))
    if result.fallbacks:
        log.warning("%d matrices are not in %s but in %s (row lengths off the quantizer's block; docs/deploy.md: "
                    "prune with pruner.round_to=32 or 256)", len(result.fallbacks), c.dtype,
                    ", ".join(sorted(set(result.fallbacks.values()))))
    return summary


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_export(typed(cfg), HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
