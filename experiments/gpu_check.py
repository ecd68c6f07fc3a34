"""The prepared GPU check: NIRVANA on a Llama-3.1-8B-shaped model within a 24 GiB budget, on one GPU.

    python -m experiments.gpu_check                     # on a CUDA GPU: 8B shape, bf16, 24 GiB cap (budget: 8 min on an H200)
    python -m experiments.gpu_check --shape llama-tiny-shape --device cpu --dtype float32 --out /tmp/gpu_check.json
    python -m experiments.gpu_check --only zeroshot --out results/bench/gpu_zeroshot.json   # step 7 alone

The steps and what each checks: nirvana/bench/gpu_check.py. Writes results/bench/gpu_check.json; exits 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from nirvana.atomic import write_json
from nirvana.bench.gpu_check import run_check
from nirvana.bench.models import SHAPES
from nirvana.bench.summary import provenance

log = logging.getLogger("experiments.gpu_check")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llama-8b-shape", choices=sorted(SHAPES))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--cap-gib", type=float, default=24.0, help="memory cap for scoring (CUDA only)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--gamma", type=float, default=3.36)
    p.add_argument("--batch", type=int, default=32, help="calibration rows (official: 32)")
    p.add_argument("--seq-len", type=int, default=128, help="calibration length (official: 128)")
    p.add_argument("--speed-repeats", type=int, default=5, help="repeats of every timed comparison")
    p.add_argument("--zeroshot-docs", type=int, default=64, help="documents of the zero-shot mix (11 requests each)")
    p.add_argument("--zeroshot-batch", type=int, default=32, help="batch size of both lm-eval model classes")
    p.add_argument("--only", choices=["zeroshot"], help="run one step alone (zeroshot: the lm-eval classes)")
    p.add_argument("--out", default="results/bench/gpu_check.json")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here (use --device cpu with a small --shape to try it)")
    if not 0 < args.sparsity < 1 or args.gamma <= 0 or args.batch < 1 or args.seq_len < 2:
        p.error("need 0 < sparsity < 1, gamma > 0, batch ≥ 1, seq-len ≥ 2")
    if args.zeroshot_docs < 1 or args.zeroshot_batch < 1 or args.speed_repeats < 1:
        p.error("need zeroshot-docs, zeroshot-batch and speed-repeats ≥ 1")
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    args = parse_args(argv)
    result = run_check(args)
    doc = {"section": "gpu_check", "config": vars(args), "result": result,
           "provenance": provenance("python -m experiments.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv))}
    write_json(Path(args.out), doc)
    log.info("%s → %s (%s s)", result["checks"], args.out, result["seconds"])
    failed = [k for k, v in result["checks"].items() if v is False]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
