"""Tiny random models and a tokenizer trained on the spot, for tests and smoke runs.

Nothing binary is committed: the tokenizer is a byte-level BPE trained in seconds on the standard library's
`pydoc_data.topics` text, and models are random-initialised from small configs of the real transformers
classes, so every adapter is exercised on the same code paths as the full-size models.
"""

from __future__ import annotations

import functools

import torch

TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
TINY_VOCAB = 512


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = TINY_VOCAB):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = pydoc_text()
    tok.train_from_iterator([text[i : i + 2000] for i in range(0, len(text), 2000)], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_config(family: str = "llama", vocab_size: int = TINY_VOCAB, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    if family not in classes:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {TINY_FAMILIES}")
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=family in ("qwen2", "qwen3"),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    if family == "qwen3":
        kwargs["head_dim"] = 24  # Qwen3 decouples head_dim from hidden/heads; exercise that
    kwargs.update(overrides)
    return classes[family](**kwargs)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=torch.float32)
    # Random init has tiny weights; scale them up so units differ clearly and logits are not ~uniform.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(10.0)
    return model.eval()
