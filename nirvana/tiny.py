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


def tiny_model(family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """`dtype` builds the model in that dtype (as loading does: rotary tables stay fp32), not `.to(dtype)`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=dtype)
    # Random init has tiny weights; scale them up so units differ clearly and logits are not ~uniform.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(10.0)
    return model.eval()


# --- encoder–decoder (T5) ----------------------------------------------------------------------------------
# "t5": T5 v1.0 (ReLU wi/wo, tied embeddings, decoder output scaled by d_model^-0.5);
# "flan_t5": T5 v1.1 / Flan-T5 (gated-GELU wi_0/wi_1/wo, untied LM head).
TINY_T5_VARIANTS = ("t5", "flan_t5")


def tiny_t5_config(variant: str = "t5", vocab_size: int = TINY_VOCAB, **overrides):
    from transformers import T5Config

    if variant not in TINY_T5_VARIANTS:
        raise ValueError(f"unknown tiny T5 variant {variant!r}; choose one of {TINY_T5_VARIANTS}")
    kwargs = dict(
        vocab_size=vocab_size,
        d_model=64,
        d_kv=16,
        num_heads=4,
        d_ff=128,
        num_layers=3,
        num_decoder_layers=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="relu" if variant == "t5" else "gated-gelu",
        tie_word_embeddings=variant == "t5",
        # the tiny tokenizer has one special token (id 0): pad, EOS and decoder start alike
        pad_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=0,
    )
    kwargs.update(overrides)
    return T5Config(**kwargs)


def tiny_t5_model(variant: str = "t5", seed: int = 0, **overrides):
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(tiny_t5_config(variant, **overrides), dtype=torch.float32)
    # Scale the blocks' matrices (and the relative-bias tables) up so units differ clearly; the shared
    # embedding and head already have T5's unit-variance init.
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and id(p) not in embeddings:
                p.mul_(3.0)
    return model.eval()
