"""LoRA recovery fine-tuning of a pruned model on `transformers.Trainer` + `peft`, merged back into a checkpoint.

    settings = LoraSettings()                                   # the official settings
    train, val = split_train_val(load_examples("alpaca"), settings.val_set_size, settings.seed)
    merged, result, info = recover(model, tokenizer, train, val, settings, work_dir="outputs/recover/x")

The official protocol (LLM-Pruner's `post_training.py`, which the official NIRVANA code follows): peft LoRA
r=8, α=16, dropout 0.05 on every attention and MLP projection, AdamW lr 1e-4, linear schedule with 100 warm-up
steps, gradient clipping at 1.0, 2 epochs, effective batch 16 = micro-batch 2 × 8 accumulation steps, texts cut
at 2048 tokens, validation loss every 100 steps and the adapter with the best validation loss merged at the end.
LLM-Pruner's own post-training is a `Trainer`, and so is this: schedule, accumulation, checkpoint rotation,
best-checkpoint tracking and resumption (optimizer, scheduler, RNG state, data position) are Trainer's. What
is ours: the adapter names the projections to wrap (pruned layers keep their own widths, which we check), a
fingerprint refuses to resume a work folder written with other settings or data, and the result record.

Deliberate differences from the official script: padding on the right (nirvana.recovery.data.Collator); fp32 on
CPU / the model's dtype on GPU with fp32 adapters, instead of fp16 autocast; examples whose prompt alone reaches
the cutoff (no response token left) are dropped. Losses are Trainer's: an optimizer step's loss is the mean
over all response tokens of its micro-batches; the validation loss is the mean over validation batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapters import get_adapter
from .data import IGNORE, Collator, pad_id, tokenize_examples

FINGERPRINT_FILE = "recovery_fingerprint.json"


@dataclass
class LoraSettings:
    """The official recovery settings by default (module docstring); `target_modules=None`: every attention and
    MLP projection, as the model's adapter names them."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    lr: float = 1e-4
    epochs: int = 2
    micro_batch_size: int = 2
    grad_accum: int = 8  # effective batch = micro_batch_size × grad_accum
    cutoff: int = 2048
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_steps: int | None = None  # overrides epochs (Trainer semantics: the data cycles if needed)
    train_on_inputs: bool = False  # True: loss on the prompt tokens too
    val_set_size: int = 2000
    seed: int = 42
    eval_every: int | None = 100  # validation loss every N steps (and always at the end)
    load_best_at_end: bool = True  # merge the adapter with the lowest validation loss, as the official run
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)
            if not self.target_modules:
                raise ValueError("recovery.target_modules is empty: name projections, or null for all of them")
        for name in ("r", "micro_batch_size", "grad_accum", "cutoff", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"recovery.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"recovery.max_steps must be ≥ 1 or null, got {self.max_steps}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"recovery.eval_every must be ≥ 1 or null, got {self.eval_every}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"recovery.dropout must lie in [0, 1), got {self.dropout}")
        if not self.lr > 0:
            raise ValueError(f"recovery.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.val_set_size < 0:
            raise ValueError("recovery.warmup_steps and recovery.val_set_size must be ≥ 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraSettings:
        """From a config dict; keys that are not settings (name, data, …) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = None if self.target_modules is None else list(self.target_modules)
        return d

    @property
    def effective_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum


# --- LoRA ---------------------------------------------------------------------------------------------------
def apply_lora(model, settings: LoraSettings):
    """Wrap the adapter's projections of every layer with LoRA (peft). Pruned layers have their own widths;
    peft reads them from each nn.Linear, which we check (a mismatch would be a silent bug)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as LoraLinear

    adapter = get_adapter(model)
    targets = list(settings.target_modules or adapter.lora_targets())
    unknown = set(targets) - set(adapter.lora_targets())
    if unknown:
        raise ValueError(f"recovery.target_modules {sorted(unknown)}: {type(adapter).__name__} has "
                         f"{adapter.lora_targets()}")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none", task_type=adapter.lora_task_type)
    if settings.gradient_checkpointing:
        model.activation_checkpointing_enable()  # transformers 5's name for gradient checkpointing
        model.enable_input_require_grads()
    expected = sum(1 for name, _ in model.named_modules() if name.split(".")[-1] in targets)
    peft_model = get_peft_model(model, config)
    wrapped = 0
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLinear):
            base = module.get_base_layer()
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            if a.shape != (settings.r, base.in_features) or b.shape != (base.out_features, settings.r) \
                    or base.weight.shape != (base.out_features, base.in_features):
                raise RuntimeError(f"LoRA shapes of {name} do not match its (pruned) layer {tuple(base.weight.shape)}")
            wrapped += 1
    if wrapped != expected:
        raise RuntimeError(f"LoRA wrapped {wrapped} projections, expected {expected} ({targets} in every layer)")
    return peft_model


def merge_lora(peft_model):
    """Fold the adapters into the weights and return the plain (pruned) model, ready for save_pruned."""
    merged = peft_model.merge_and_unload()
    if merged.is_activation_checkpointing:
        merged.activation_checkpointing_disable()
    return merged.eval()


# --- training -----------------------------------------------------------------------------------------------
@dataclass
class RecoveryResult:
    steps: int
    total_steps: int
    n_train: int
    n_val: int
    first_loss: float | None  # train loss of step 1 (the pruned model, before any update)
    train_loss: float | None  # mean train loss over the last min(10, steps) steps
    val_loss: float | None  # validation loss of the merged adapter (None: no validation set)
    best_step: int | None
    resumed_from: int | None
    seconds: float  # this process's training time (not counting earlier, interrupted runs)
    history: list[list[float]] = field(default_factory=list)  # [step, train loss, lr]
    val_history: list[list[float]] = field(default_factory=list)  # [step, val loss]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fingerprint(settings: LoraSettings, train: Sequence[dict], val: Sequence[dict]) -> str:
    """What a resumed run must share with the run it continues: the settings and the tokenized data."""
    h = hashlib.sha256(json.dumps(settings.to_dict(), sort_keys=True).encode())
    for part in (train, val):
        h.update(str(len(part)).encode())
        for ex in part:
            h.update(torch.tensor(ex["input_ids"] + [-1] + ex["labels"], dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def _check_resumable(work_dir: Path, fp: str) -> None:
    path = work_dir / FINGERPRINT_FILE
    if path.is_file():
        saved = json.loads(path.read_text())["fingerprint"]
        if saved != fp:
            raise ValueError(f"{work_dir} belongs to a run with other settings or data (fingerprint {saved} ≠ {fp}); "
                             "use another work_dir or delete it")
    else:
        from ..atomic import write_json

        write_json(path, {"fingerprint": fp})


def _trainer(peft_model, train, val, settings: LoraSettings, work_dir: Path, pad: int, progress: bool,
             save_every: int, keep_last: int, callbacks: list):
    from transformers import Trainer, TrainingArguments

    evaluate = bool(val) and settings.eval_every is not None
    if evaluate and settings.load_best_at_end and save_every % settings.eval_every:
        raise ValueError(f"save_every={save_every} must be a multiple of recovery.eval_every={settings.eval_every} "
                         "to keep the best adapter (recovery.load_best_at_end)")
    args = TrainingArguments(
        output_dir=str(work_dir), per_device_train_batch_size=settings.micro_batch_size,
        per_device_eval_batch_size=settings.micro_batch_size, gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.lr, num_train_epochs=settings.epochs, max_steps=settings.max_steps or -1,
        lr_scheduler_type="linear", warmup_steps=settings.warmup_steps, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm or 0.0, optim="adamw_torch", seed=settings.seed,
        logging_steps=1, logging_nan_inf_filter=False,  # Trainer hides NaN losses by default: our guard must see them
        eval_strategy="steps" if evaluate else "no", eval_steps=settings.eval_every,
        save_strategy="steps", save_steps=save_every, save_total_limit=keep_last,
        load_best_model_at_end=evaluate and settings.load_best_at_end, metric_for_best_model="eval_loss",
        greater_is_better=False, report_to="none", disable_tqdm=not progress, remove_unused_columns=False,
        use_cpu=next(peft_model.parameters()).device.type == "cpu", dataloader_num_workers=0,
    )
    return Trainer(model=peft_model, args=args, train_dataset=list(train), eval_dataset=list(val) or None,
                   data_collator=Collator(pad), callbacks=callbacks)


def train_lora(peft_model, train: Sequence[dict], val: Sequence[dict], settings: LoraSettings,
               work_dir: str | Path, pad: int = 0, progress: bool = True,
               callback: Callable[[int, dict], None] | None = None, save_every: int = 200,
               keep_last: int = 2) -> RecoveryResult:
    """Train the LoRA weights of `peft_model` on tokenized `train` with Trainer; resumes from the newest
    checkpoint in `work_dir` when it holds one of the same run. `callback(step, logs)` runs as each step's
    loss is logged (before that step's evaluation and checkpoint)."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint

    if not train:
        raise ValueError("no training example (after dropping those with no response token within the cutoff)")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    _check_resumable(work_dir, fingerprint(settings, train, val))

    class Relay(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss", (logs or {}).get("eval_loss"))
            if loss is not None and not math.isfinite(loss):  # stop before a NaN adapter is saved or merged
                raise ValueError(f"LoRA recovery: the {'validation' if 'eval_loss' in logs else 'training'} loss "
                                 f"at step {state.global_step} is {loss}; lower recovery.lr or check the model")
            if callback is not None and logs and "loss" in logs:
                callback(state.global_step, dict(logs))

    trainer = _trainer(peft_model, train, val, settings, work_dir, pad, progress, save_every, keep_last, [Relay()])
    last = get_last_checkpoint(str(work_dir))
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)  # a complete run resumes at its end and trains no step
    seconds = time.perf_counter() - t0
    logs = trainer.state.log_history
    history = [[e["step"], e["loss"], e["learning_rate"]] for e in logs if "loss" in e]
    val_history = [[e["step"], e["eval_loss"]] for e in logs if "eval_loss" in e]
    val_loss = None
    if val:
        val_loss = trainer.evaluate()["eval_loss"]  # the adapter that is merged: the best one if kept
    best = trainer.state.best_model_checkpoint
    tail = [h[1] for h in history[-10:]]
    peft_model.eval()
    return RecoveryResult(
        steps=trainer.state.global_step, total_steps=trainer.state.max_steps, n_train=len(train), n_val=len(val),
        first_loss=history[0][1] if history else None, train_loss=sum(tail) / len(tail) if tail else None,
        val_loss=val_loss, best_step=int(Path(best).name.split("-")[-1]) if best else None,
        resumed_from=int(Path(last).name.split("-")[-1]) if last else None, seconds=seconds, history=history,
        val_history=val_history)


def recover(model, tokenizer, train_examples: Sequence[dict], val_examples: Sequence[dict],
            settings: LoraSettings, work_dir: str | Path, progress: bool = True,
            callback: Callable[[int, dict], None] | None = None, save_every: int = 200, keep_last: int = 2):
    """Tokenize, wrap with LoRA, train (resumable), merge. Returns (merged model, RecoveryResult, info)."""
    from transformers import set_seed

    set_seed(settings.seed)  # the LoRA A-matrix initialisation draws from torch's RNG: repeatable runs
    seq2seq = get_adapter(model).seq2seq  # (prompt → response) pairs instead of one causal text
    train, dropped_t = tokenize_examples(tokenizer, train_examples, settings.cutoff, settings.train_on_inputs,
                                         progress, seq2seq)
    val, dropped_v = tokenize_examples(tokenizer, val_examples, settings.cutoff, settings.train_on_inputs,
                                       progress, seq2seq)
    peft_model = apply_lora(model, settings)
    result = train_lora(peft_model, train, val, settings, work_dir, pad_id(tokenizer), progress, callback,
                        save_every, keep_last)
    skip = 0 if seq2seq else 1
    info = {"dropped_examples": dropped_t + dropped_v,
            "train_tokens_per_epoch": sum(sum(label != IGNORE for label in t["labels"][skip:]) for t in train)}
    return merge_lora(peft_model), result, info


def recovery_record(settings: LoraSettings, result: RecoveryResult, data: dict[str, Any],
                    source_checkpoint: str | None = None, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """What goes into the recovered checkpoint's plan (`plan.extra["recovery"]`): settings, data, outcome."""
    return {"method": "lora", "merged": True, "settings": settings.to_dict(), "data": data,
            "source_checkpoint": source_checkpoint, "steps": result.steps, "total_steps": result.total_steps,
            "n_train": result.n_train, "n_val": result.n_val, "first_loss": result.first_loss,
            "train_loss": result.train_loss, "val_loss": result.val_loss, "best_step": result.best_step,
            **(info or {})}
