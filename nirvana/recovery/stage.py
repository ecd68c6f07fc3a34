"""LoRA recovery as one stage of a run (`experiments.run recovery=…`, `experiments.recover`): the config checked
and its data read before any model is loaded, then train, merge and describe."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import RecoveryConfig, RecoveryDataConfig
from .data import check_source, load_examples, split_train_val
from .lora import LoraSettings, RecoveryResult, recover, recovery_record


@dataclass(frozen=True)
class RecoveryStage:
    name: str  # the conf/recovery name: what tables call a recovered model (`flap [lora_offline]`)
    settings: LoraSettings
    data: RecoveryDataConfig

    @classmethod
    def from_config(cls, recovery: RecoveryConfig | None) -> RecoveryStage | None:
        """The stage of a run's `recovery` config (None: no recovery); reads what its data names (a missing file
        fails here, before any model is loaded)."""
        if recovery is None:
            return None
        check_source(recovery.data)
        return cls(recovery.name, recovery.settings(), recovery.data)

    @property
    def needs_hub(self) -> bool:
        return self.data.source == "alpaca"

    @property
    def training_sets(self) -> list[str] | None:
        """The registered text sets it trains on, for the disjointness check (alpaca: none of ours)."""
        return list(self.data.files) if self.data.source == "local" else None

    def examples(self) -> tuple[list[dict], list[dict]]:
        """(train, validation) instruction examples, split as the official script does."""
        return split_train_val(load_examples(**asdict(self.data)), self.settings.val_set_size, self.settings.seed)

    def run(self, model, tokenizer, examples: tuple[list[dict], list[dict]], work_dir: str | Path,
            source_checkpoint: str | None = None, plan=None, progress: bool = True,
            **resume) -> tuple[Any, RecoveryResult, dict[str, Any]]:
        """Train (resumable in `work_dir`; `resume`: save_every, keep_last) and merge: (merged model, result,
        record). The record says what was done and how it went; a pruned model's plan keeps it in
        extra["recovery"], so the saved checkpoint carries it."""
        merged, result, info = recover(model, tokenizer, *examples, self.settings, work_dir, progress, **resume)
        record = recovery_record(self.settings, result, {k: v for k, v in asdict(self.data).items() if v is not None},
                                 source_checkpoint, info)
        if plan is not None:
            plan.extra["recovery"] = record
        return merged, result, record
