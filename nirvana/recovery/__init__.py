"""LoRA recovery of pruned models (docs/protocol.md): instruction data (`data`) and training on
`transformers.Trainer` + `peft` (`lora`), and the stage a run or `experiments.recover` drives (`stage`)."""

from .data import (
    IGNORE,
    LOCAL_INSTRUCTION,
    alpaca_prompt,
    check_source,
    load_examples,
    local_examples,
    split_train_val,
    tokenize_example,
    tokenize_examples,
)
from .lora import LoraSettings, RecoveryResult, apply_lora, merge_lora, recover, recovery_record, train_lora
from .stage import RecoveryStage

__all__ = [
    "IGNORE", "LOCAL_INSTRUCTION", "alpaca_prompt", "check_source", "load_examples", "local_examples",
    "split_train_val", "tokenize_example", "tokenize_examples",
    "LoraSettings", "RecoveryResult", "apply_lora", "merge_lora", "recover", "recovery_record", "train_lora",
    "RecoveryStage",
]
