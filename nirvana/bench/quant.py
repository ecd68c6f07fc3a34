"""Quantization benchmark: size and CPU speed of each quantization scheme vs the float model it came from.

For the dense model and NIRVANA-pruned copies (real surgery), each scheme of nirvana.quantization is applied to a
fresh copy; the quantized and the float model are then timed alternately (`compare_speed`: medians of
interleaved repeats, so a noisy neighbour hits both alike) and their in-memory and on-disk sizes recorded.
Accuracy is not measured here: the quant sweep (`make reproduce-quant`) evaluates the same models with the
evidence protocol.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch


def state_dict_file_bytes(model: torch.nn.Module) -> int:
    """Bytes of the whole model's state dict written with torch.save (torchao tensors included)."""
    with tempfile.TemporaryDirectory(prefix="nirvana-bench-quant-") as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(model.state_dict(), path)
        return path.stat().st_size


def measure_scheme(base: torch.nn.Module, spec, calibration_ids: torch.Tensor, repeats: int, shape: dict,
                   file_bytes: bool = False) -> dict:
    """Quantize a fresh copy of `base` with `spec` (SmoothQuant's ranges from `calibration_ids`) and time it
    against `base`: what each scheme's row records; `file_bytes` adds both models' torch.save sizes."""
    from ..evaluation.speed import compare_speed
    from ..quantization import model_bytes, quantize

    t0 = time.perf_counter()
    quantized = copy.deepcopy(base)
    decisions = quantize(quantized, spec, calibration_ids)
    quantize_s = time.perf_counter() - t0
    speed = compare_speed(quantized, base, repeats=repeats, **shape)
    row = {"scheme": spec.label(), **shape, "repeats": repeats, "layers": len(decisions),
           "per_channel_layers": sum(d.endswith("per_channel") for d in decisions.values()),
           "float_bytes": model_bytes(base), "quant_bytes": model_bytes(quantized), "quantize_s": quantize_s,
           "prefill_tok_s": speed["prefill_tok_s"], "decode_tok_s": speed["decode_tok_s"],
           "float_prefill_tok_s": speed["dense_prefill_tok_s"], "float_decode_tok_s": speed["dense_decode_tok_s"],
           "prefill_speedup": speed["prefill_speedup"], "decode_speedup": speed["decode_speedup"]}
    if file_bytes:
        row |= {"float_file_bytes": state_dict_file_bytes(base), "quant_file_bytes": state_dict_file_bytes(quantized)}
    return row


def run_quant_bench(name_or_path: str, sparsities, gamma: float, schemes, shapes: list[dict], repeats: int,
                    calibration: dict, score_cache: str | None = None, progress=None) -> dict:
    """`sparsities`: 0 means the dense model; `schemes`: conf/quant names (their defaults: group 128, α 0.5)."""
    from ..calibration import build_calibration
    from ..models import load_model
    from ..pruners import compute_plan
    from ..quantization import QuantSpec
    from ..surgery.cut import cut_copy

    specs = [QuantSpec(scheme=s) for s in schemes]  # a bad scheme fails here
    QuantSpec.check_runtime()
    for s in sparsities:
        if not 0.0 <= float(s) < 1.0:
            raise ValueError(f"quant bench sparsities must lie in [0, 1), got {s}")
    dense, tokenizer = load_model(name_or_path)
    ids = build_calibration(tokenizer=tokenizer, **calibration)
    floats: dict[float, torch.nn.Module] = {}
    rows = []
    jobs = [(float(s), spec, shape) for s in sparsities for spec in specs for shape in shapes]
    for sparsity, spec, shape in (progress(jobs) if progress else jobs):
        if sparsity not in floats:
            if sparsity == 0.0:
                floats[sparsity] = dense
            else:
                plan = compute_plan(dense, ids, "nirvana", sparsity=sparsity, gamma=gamma, score_cache=score_cache)
                floats[sparsity] = cut_copy(dense, plan)
        rows.append({"sparsity": sparsity,
                     **measure_scheme(floats[sparsity], spec, ids, repeats, shape, file_bytes=True)})
    return {"model": name_or_path, "threads": torch.get_num_threads(), "rows": rows}
