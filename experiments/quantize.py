"""Quantize one checkpoint (dense or pruned) with torchao and save the quantized weights next to it.

    python -m experiments.quantize model.path=CHECKPOINT_DIR quant=int8_wo
    python -m experiments.quantize model=smollm2_135m quant=w8a8_smoothquant quant.alpha=0.5 save_dir=DIR

The save folder (default: the run folder) gets `quantized.pt` (loads with weights_only=True) and
`quantization.json` (the spec and every projection's decision); `nirvana.quantization.load_quantized(model, DIR)`
puts them back into the float checkpoint they came from. To evaluate, quantize inside a run instead:
`python -m experiments.run ... quant=int8_wo`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nirvana.atomic import write_json
from nirvana.config import QuantizeConfig, typed
from nirvana.models import load_from_config
from nirvana.quantization import quantize_stage, save_quantized

log = logging.getLogger("experiments.quantize")


def run_quantize(c: QuantizeConfig, out_dir: str | Path) -> dict:
    spec = c.quant  # a bad scheme or option failed when the config was built, before the model loads
    spec.check_runtime()
    model, tokenizer = load_from_config(c.model)
    result = quantize_stage(model, tokenizer, spec, c.calibration, None)
    save_dir = save_quantized(model, spec, result["layers"], c.save_dir or out_dir)
    summary = {"spec": asdict(spec), "bytes_before": result["bytes_before"], "bytes_after": result["bytes_after"],
               "decisions": sorted(set(result["layers"].values())), "save_dir": str(save_dir)}
    write_json(Path(out_dir) / "summary.json", summary)
    log.info("%s: %d projections → %s; %.1f → %.1f MiB; saved to %s", spec.label(), len(result["layers"]),
             ", ".join(summary["decisions"]), result["bytes_before"] / 2**20, result["bytes_after"] / 2**20, save_dir)
    return summary


@hydra.main(config_path="../conf", config_name="quantize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_quantize(typed(cfg), HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
