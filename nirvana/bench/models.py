"""Models the benchmarks run on: the offline SmolLM2 and Qwen2.5-Coder, and random-initialised models with real
shapes.

Random weights are enough for memory and time (they depend on shapes, not values) and need no download; the
shapes are copied from the public configs of Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B.
"""

from __future__ import annotations

import torch

SHAPES = {
    "llama-1b-shape": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                           rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5),
    "llama-3b-shape": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                           num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True,
                           rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5),
    "llama-8b-shape": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
                           rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5),
    # Small stand-ins with the same structure (GQA 4:1, untied head), for tests on CPU.
    "llama-tiny-shape": dict(hidden_size=128, intermediate_size=448, num_hidden_layers=4, num_attention_heads=8,
                             num_key_value_heads=2, head_dim=16, vocab_size=1024, tie_word_embeddings=False,
                             rope_theta=500000.0, max_position_embeddings=2048, rms_norm_eps=1e-5),
}
# The offline assets (Qwen: opt-in, `make bench` builds it): real weights and, for Qwen, a 151,936-token output.
BUILTIN = {"smollm2": "builtin:smollm2-135m-instruct", "qwen2.5-coder": "builtin:qwen2.5-coder-0.5b-instruct"}
MODEL_SPECS = (*BUILTIN, *SHAPES)


def check_model_spec(spec: str) -> None:
    if spec not in MODEL_SPECS:
        raise ValueError(f"unknown benchmark model {spec!r}; choose one of {list(MODEL_SPECS)}")


def random_llama(shape: str, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A LlamaForCausalLM with `SHAPES[shape]` and seeded random weights, built directly on `device` in
    `dtype` (an 8B model never exists in fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    check_model_spec(shape)
    config = LlamaConfig(**SHAPES[shape])
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def load_bench_model(spec: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    check_model_spec(spec)
    if spec in BUILTIN:
        from ..models import load_model

        return load_model(BUILTIN[spec], dtype=dtype, device=device)[0]
    return random_llama(spec, device, dtype)


def random_ids(vocab_size: int, batch: int, seq_len: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    """Seeded uniform token ids: scoring cost does not depend on the tokens, and plans only need to agree
    between the variants compared, which all see the same ids."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_len), generator=g).to(device)
