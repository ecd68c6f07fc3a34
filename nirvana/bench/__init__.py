"""Benchmarks behind `make bench` (results under results/bench/): each figure is measured side by side with
its reference in one run, repeated, and reported as medians and ratios.

Sections (one module each, one JSON file each, so an interrupted bench keeps what it finished):
  - scoring   — NIRVANA scoring peak memory and time, ours vs a naive full-gradient scorer (nirvana.bench.naive)
  - speed     — pruned vs dense prefill/decode throughput against the FLOP ratio
  - zeroshot  — lm-eval requests/s through our evaluation path vs the stock `lm_eval --model hf` CLI
  - demo      — wall time of the `make demo` job
`experiments/gpu_check.py` is the GPU counterpart (Llama-3.1-8B shape under a 24 GiB cap).
"""
