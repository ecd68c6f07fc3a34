"""LoRA recovery fine-tuning of a pruned model (REFERENCE.md §4), resumable, merged back into a checkpoint.

    from nirvana.recovery import LoraSettings, load_examples, split_train_val, recover
    settings = LoraSettings()                                   # the official settings
    train, val = split_train_val(load_examples("alpaca"), settings.val_set_size, settings.seed)
    merged, result = recover(model, tokenizer, train, val, settings, work_dir="outputs/recover/x")
    save_pruned(merged, plan_with_recovery(plan, settings, result), "ckpt_recovered", tokenizer)

The official protocol (the NIRVANA code follows LLM-Pruner's `post_training.py`, itself alpaca-lora's):
peft LoRA r=8, α=16, dropout 0.05 on q/k/v/o/gate/up/down, AdamW (torch) lr 1e-4, linear schedule with 100
warm-up steps, gradient clipping at 1.0, 2 epochs, effective batch 16 = micro-batch 2 × 8 accumulation steps,
texts cut at 2048 tokens, the Alpaca prompt template, loss on the response tokens only, `yahma/alpaca-cleaned`
with 2,000 examples held out (datasets' `train_test_split(test_size=2000, shuffle=True, seed=42)`), validation
loss every 100 steps and the best adapter by validation loss kept at the end.

Differences from that script, all deliberate: padding on the right (the official collator pads on the left,
which shifts the positions of short examples); the loss of an optimizer step is the mean over all response
tokens of its micro-batches (what transformers' Trainer does since 4.46; older versions averaged per-micro-batch
means); examples whose prompt alone reaches the cutoff (no response token left) are dropped, not trained on
with an empty loss; fp32 on CPU / the model's dtype on GPU with fp32 adapters, instead of fp16 autocast.

Offline stand-in (`source="local"`): without the hub there is no alpaca-cleaned, so we build instruction
examples from local passages: instruction "Continue the text:", input = the first half of a passage's words,
response = the rest. It is a language-modelling signal in instruction clothing, NOT the paper's data: use it
for demos and tests, never for numbers compared with the paper.

Resumption: every `save_every` steps the LoRA weights, optimizer, scheduler, RNG state and step go to
`<work_dir>/step-NNNNNNNN/` (written to a temp folder, then renamed: a folder with that name is complete).
A rerun with the same settings and data loads the newest one and continues at the next step; the data order
is a pure function of (seed, epoch), so resumed runs see exactly the batches the uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import paths
from .atomic import atomic_dir

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALPACA_DATASET = "yahma/alpaca-cleaned"
# alpaca-lora's templates/alpaca.json, which LLM-Pruner and the official NIRVANA code use
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
LOCAL_INSTRUCTION = "Continue the text:"
IGNORE = -100  # label of tokens that carry no loss
STEP_PREFIX, BEST_PREFIX = "step-", "best-"


# --- settings -----------------------------------------------------------------------------------------------
@dataclass
class LoraSettings:
    """The official recovery settings by default (see the module docstring)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = LORA_TARGETS
    lr: float = 1e-4
    epochs: int = 2
    micro_batch_size: int = 2
    grad_accum: int = 8  # effective batch = micro_batch_size × grad_accum
    cutoff: int = 2048
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_steps: int | None = None  # overrides epochs (HF semantics: the data cycles if needed)
    train_on_inputs: bool = False  # True: loss on the prompt tokens too
    val_set_size: int = 2000
    seed: int = 42
    eval_every: int | None = 100  # validation loss every N steps (and always at the end)
    save_every: int = 200  # resumable checkpoint every N steps (and always at the end)
    keep_last: int = 2  # step checkpoints kept on disk
    load_best_at_end: bool = True  # merge the adapter with the lowest validation loss, as the official run
    gradient_checkpointing: bool = False

    # keys that do not change the trained weights: a resumed run may change them freely
    BOOKKEEPING = ("save_every", "keep_last")

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        for name in ("r", "micro_batch_size", "grad_accum", "cutoff", "epochs", "save_every", "keep_last"):
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
        unknown = set(self.target_modules) - set(LORA_TARGETS)
        if unknown or not self.target_modules:
            raise ValueError(f"recovery.target_modules {sorted(unknown) or '[]'}: choose among {list(LORA_TARGETS)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraSettings:
        """From a config dict; keys that are not settings (name, data, …) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @property
    def effective_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum


# --- data ---------------------------------------------------------------------------------------------------
def alpaca_prompt(instruction: str, input: str = "", output: str = "") -> str:
    """The Alpaca template; with `output` empty it is the prompt the response is conditioned on."""
    template = ALPACA_PROMPT_INPUT if input else ALPACA_PROMPT_NO_INPUT
    return template.format(instruction=instruction, input=input) + output


def load_alpaca(dataset: str = ALPACA_DATASET, split: str = "train", max_examples: int | None = None):
    """alpaca-cleaned (instruction / input / output) through `datasets`, as a `datasets.Dataset`."""
    import datasets

    try:
        data = datasets.load_dataset(dataset, split=split)
    except Exception as e:  # offline machines end here; say what to use instead
        raise RuntimeError(
            f"could not load {dataset} [{split}] for LoRA recovery ({type(e).__name__}: {e}). Without the hub, "
            "use the offline stand-in: recovery=lora_offline (or recovery.data.source=local)"
        ) from e
    missing = {"instruction", "input", "output"} - set(data.column_names)
    if missing:
        raise ValueError(f"{dataset} lacks the Alpaca columns {sorted(missing)} (has {data.column_names})")
    if max_examples is not None:
        data = data.select(range(min(max_examples, len(data))))
    return data


def text_file(name: str) -> Path:
    """`lambada_tail` → <text_dir>/lambada_tail.jsonl; anything else is a path."""
    path = paths.text_dir() / f"{name}.jsonl" if "/" not in name and not name.endswith(".jsonl") else Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"recovery text file {path} not found (offline sets are built by `make assets`)")
    return path


def local_examples(files: Sequence[str] = ("lambada_tail",), instruction: str = LOCAL_INSTRUCTION,
                   input_fraction: float = 0.5, min_words: int = 16, max_examples: int | None = None) -> list[dict]:
    """The offline stand-in: each passage (JSONL field "text") of at least `min_words` words becomes
    {instruction, input: its first `input_fraction` of words, output: the rest}."""
    if not 0.0 < input_fraction < 1.0:
        raise ValueError(f"input_fraction must lie in (0, 1), got {input_fraction}")
    out = []
    for name in files:
        with open(text_file(name), encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                words = json.loads(line)["text"].split()
                if len(words) < min_words:
                    continue
                cut = max(1, int(len(words) * input_fraction))
                out.append({"instruction": instruction, "input": " ".join(words[:cut]),
                            "output": " ".join(words[cut:])})
                if max_examples is not None and len(out) >= max_examples:
                    return out
    if not out:
        raise ValueError(f"no passage of ≥ {min_words} words in {list(files)}")
    return out


def load_examples(source: str = "alpaca", dataset: str = ALPACA_DATASET, max_examples: int | None = None,
                  files: Sequence[str] = ("lambada_tail",), instruction: str = LOCAL_INSTRUCTION,
                  input_fraction: float = 0.5, **_ignored):
    """Instruction examples: `alpaca` (the hub) or `local` (the offline stand-in)."""
    if source == "alpaca":
        return load_alpaca(dataset, max_examples=max_examples)
    if source == "local":
        return local_examples(files, instruction, input_fraction, max_examples=max_examples)
    raise ValueError(f"unknown recovery data source {source!r}: choose alpaca (hub) or local (offline stand-in)")


def split_train_val(examples, val_set_size: int, seed: int = 42) -> tuple[list[dict], list[dict]]:
    """Hold out `val_set_size` examples exactly as the official script does (datasets' seeded
    `train_test_split`), so the same alpaca examples end up in validation."""
    import datasets

    data = examples if isinstance(examples, datasets.Dataset) else datasets.Dataset.from_list(list(examples))
    if val_set_size == 0:
        return data.to_list(), []
    if val_set_size >= len(data):
        raise ValueError(f"val_set_size={val_set_size} leaves no training example (the data has {len(data)})")
    split = data.train_test_split(test_size=val_set_size, shuffle=True, seed=seed)
    return split["train"].to_list(), split["test"].to_list()


def tokenize_example(tokenizer, example: dict, cutoff: int, train_on_inputs: bool = False) -> dict[str, list[int]]:
    """Full text (prompt + response) cut at `cutoff` tokens, EOS appended when there is room; with
    `train_on_inputs=False` the prompt's tokens get label -100 (counted by tokenizing the prompt alone, as the
    official script does)."""
    prompt = alpaca_prompt(example["instruction"], example.get("input") or "")
    ids = tokenizer(prompt + example["output"], truncation=True, max_length=cutoff)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos) and len(ids) < cutoff:
        ids = ids + [eos]
    labels = list(ids)
    if not train_on_inputs:
        n_prompt = len(tokenizer(prompt, truncation=True, max_length=cutoff)["input_ids"])
        labels = [IGNORE] * n_prompt + labels[n_prompt:]
    return {"input_ids": ids, "labels": labels}


def tokenize_examples(tokenizer, examples: Sequence[dict], cutoff: int, train_on_inputs: bool = False,
                      progress: bool = False) -> tuple[list[dict], int]:
    """(tokenized examples, number dropped because no response token survived the cutoff)."""
    out, dropped = [], 0
    for ex in tqdm(examples, desc="tokenize", disable=not progress):
        t = tokenize_example(tokenizer, ex, cutoff, train_on_inputs)
        if any(label != IGNORE for label in t["labels"][1:]):  # the first label is never predicted
            out.append(t)
        else:
            dropped += 1
    return out, dropped


def collate(batch: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded LongTensors input_ids / attention_mask / labels (padding carries no loss)."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


# --- LoRA ---------------------------------------------------------------------------------------------------
def apply_lora(model, settings: LoraSettings):
    """Wrap every target projection of every layer with a LoRA adapter (peft). Pruned layers have their own
    widths; peft reads them from each nn.Linear, which we check (a mismatch would be a silent bug)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as LoraLinear

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM")
    if settings.gradient_checkpointing:
        model.activation_checkpointing_enable()  # transformers 5's name for gradient checkpointing
        model.enable_input_require_grads()
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
    n_layers = len(peft_model.get_base_model().model.layers)
    if wrapped != n_layers * len(settings.target_modules):
        raise RuntimeError(f"LoRA wrapped {wrapped} projections, expected {n_layers} layers × "
                           f"{len(settings.target_modules)} targets")
    return peft_model


def merge_lora(peft_model):
    """Fold the adapters into the weights and return the plain (pruned) model, ready for save_pruned."""
    merged = peft_model.merge_and_unload()
    if merged.is_activation_checkpointing:
        merged.activation_checkpointing_disable()
    return merged.eval()


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed next-token NLL over the labelled tokens, their count); fp32 log-softmax."""
    device = next(model.parameters()).device
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    target = labels[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss, int((target != IGNORE).sum())


@torch.no_grad()
def dataset_loss(model, data: Sequence[dict], pad_id: int, batch_size: int = 2) -> float:
    """Mean NLL per labelled token over `data` (eval mode: no dropout)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        s, n = loss_sum(model, collate(data[start : start + batch_size], pad_id))
        total, count = total + float(s), count + n
    model.train(was_training)
    return total / max(count, 1)


# --- the schedule of micro-batches -------------------------------------------------------------------------
@dataclass
class Schedule:
    """Which examples each optimizer step sees: a pure function of (seed, epoch), so resumption is exact."""

    n_train: int
    micro_batch_size: int
    grad_accum: int
    epochs: int
    seed: int
    max_steps: int | None = None

    @property
    def micro_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.micro_batch_size)

    @property
    def total_micro(self) -> int | None:
        return None if self.max_steps is not None else self.epochs * self.micro_per_epoch

    @property
    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return math.ceil(self.total_micro / self.grad_accum)

    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n_train, generator=g).tolist()

    def micro_batches(self, step: int) -> list[list[int]]:
        """Example indices of each micro-batch of optimizer step `step` (0-based)."""
        last = (step + 1) * self.grad_accum
        if self.total_micro is not None:
            last = min(last, self.total_micro)
        out, perms = [], {}
        for j in range(step * self.grad_accum, last):
            epoch, pos = divmod(j, self.micro_per_epoch)
            if epoch not in perms:
                perms[epoch] = self._perm(epoch)
            out.append(perms[epoch][pos * self.micro_batch_size : (pos + 1) * self.micro_batch_size])
        return out

    def epoch_of(self, step: int) -> float:
        return step * self.grad_accum / self.micro_per_epoch


# --- resumable state ----------------------------------------------------------------------------------------
def _write_dir_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Fill a temp folder next to `target`, then rename it: `target` exists only when complete."""
    with atomic_dir(target) as tmp:
        write(tmp)
    return target


def _adapter_state(peft_model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}


def _load_adapter(peft_model, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(peft_model, load_file(str(folder / "adapter.safetensors")))
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{folder}: adapter keys do not fit this model: {result.unexpected_keys[:3]}")


def _save_adapter(peft_model, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file(_adapter_state(peft_model), str(folder / "adapter.safetensors"))


def _steps_in(work_dir: Path, prefix: str) -> list[tuple[int, Path]]:
    found = []
    for p in work_dir.glob(f"{prefix}*"):
        tail = p.name[len(prefix):]
        if p.is_dir() and tail.isdigit():
            found.append((int(tail), p))
    return sorted(found)


def fingerprint(settings: LoraSettings, train: Sequence[dict], val: Sequence[dict]) -> str:
    """What a resumed run must share with the run it continues: settings that shape the weights, and data."""
    h = hashlib.sha256()
    d = {k: v for k, v in settings.to_dict().items() if k not in LoraSettings.BOOKKEEPING}
    h.update(json.dumps(d, sort_keys=True).encode())
    for part in (train, val):
        h.update(str(len(part)).encode())
        for ex in part:
            h.update(torch.tensor(ex["input_ids"] + [-1] + ex["labels"], dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class RecoveryResult:
    steps: int
    total_steps: int
    n_train: int
    n_val: int
    first_loss: float | None  # train loss of step 1 (the pruned model, before any update)
    train_loss: float | None  # mean train loss over the last min(10, steps) steps
    val_loss: float | None  # final validation loss of the merged adapter (None: no validation set)
    best_step: int | None
    resumed_from: int | None
    seconds: float  # this process's training time (not counting earlier, interrupted runs)
    history: list[list[float]] = field(default_factory=list)  # [step, train loss, lr]
    val_history: list[list[float]] = field(default_factory=list)  # [step, val loss]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train_lora(peft_model, train: Sequence[dict], val: Sequence[dict], settings: LoraSettings,
               work_dir: str | os.PathLike, pad_id: int = 0, progress: bool = True,
               callback: Callable[[int, dict], None] | None = None) -> RecoveryResult:
    """Train the LoRA weights of `peft_model` on tokenized `train`; resumes from `work_dir` when it holds a
    checkpoint of the same run. `callback(step, info)` runs after each step (and its checkpoint, if any)."""
    if not train:
        raise ValueError("no training example (after dropping those with no response token within the cutoff)")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    sched = Schedule(len(train), settings.micro_batch_size, settings.grad_accum, settings.epochs, settings.seed,
                     settings.max_steps)
    total = sched.total_steps
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    lr_sched = get_linear_schedule_with_warmup(opt, settings.warmup_steps, total)
    fp = fingerprint(settings, train, val)
    state: dict[str, Any] = {"step": 0, "total_steps": total, "fingerprint": fp, "best_val": None,
                             "best_step": None, "history": [], "val_history": []}

    resumed_from = None
    checkpoints = _steps_in(work_dir, STEP_PREFIX)
    if checkpoints:
        _, latest = checkpoints[-1]
        saved = json.loads((latest / "state.json").read_text())
        if saved["fingerprint"] != fp:
            raise ValueError(f"{latest} belongs to a run with other settings or data (fingerprint "
                             f"{saved['fingerprint']} ≠ {fp}); use another work_dir or delete it")
        _load_adapter(peft_model, latest)
        opt.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
        lr_sched.load_state_dict(torch.load(latest / "scheduler.pt", weights_only=True))
        rng = torch.load(latest / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["cpu"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        state = saved
        resumed_from = state["step"]
        print(f"[recover] resumed from {latest} (step {resumed_from}/{total})")

    def save_step(step: int) -> None:
        def write(tmp: Path) -> None:
            _save_adapter(peft_model, tmp)
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
            torch.save(lr_sched.state_dict(), tmp / "scheduler.pt")
            torch.save({"cpu": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "rng.pt")
            (tmp / "state.json").write_text(json.dumps(state))

        _write_dir_atomically(work_dir / f"{STEP_PREFIX}{step:08d}", write)
        kept = _steps_in(work_dir, STEP_PREFIX)[-settings.keep_last:]
        for s, p in _steps_in(work_dir, STEP_PREFIX):
            if (s, p) not in kept:
                shutil.rmtree(p, ignore_errors=True)
        # a best adapter is kept while a retained step checkpoint (or the live state) refers to it
        needed = {state["best_step"]} | {json.loads((p / "state.json").read_text())["best_step"] for _, p in kept}
        for s, p in _steps_in(work_dir, BEST_PREFIX):
            if s not in needed:
                shutil.rmtree(p, ignore_errors=True)

    def validate(step: int) -> float:
        v = dataset_loss(peft_model, val, pad_id, settings.micro_batch_size)
        state["val_history"].append([step, v])
        if state["best_val"] is None or v < state["best_val"]:
            state["best_val"], state["best_step"] = v, step
            _write_dir_atomically(work_dir / f"{BEST_PREFIX}{step:08d}", lambda tmp: _save_adapter(peft_model, tmp))
        return v

    t0 = time.perf_counter()
    peft_model.train()
    bar = tqdm(total=total, initial=state["step"], desc="LoRA recovery", disable=not progress)
    while state["step"] < total:
        step = state["step"]
        micro = [collate([train[i] for i in idx], pad_id) for idx in sched.micro_batches(step)]
        n_tok = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro)
        step_loss = 0.0
        for batch in micro:
            s, _ = loss_sum(peft_model, batch)
            (s / max(n_tok, 1)).backward()
            step_loss += float(s.detach())
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        lr = lr_sched.get_last_lr()[0]
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        state["step"] = step = step + 1
        state["history"].append([step, step_loss / max(n_tok, 1), lr])
        info = {"loss": state["history"][-1][1], "lr": lr, "epoch": sched.epoch_of(step)}
        if val and ((settings.eval_every and step % settings.eval_every == 0) or step == total):
            info["val_loss"] = validate(step)
            peft_model.train()
        if step % settings.save_every == 0 or step == total:
            save_step(step)
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()})
        if callback is not None:
            callback(step, info)
    bar.close()

    if val and not state["val_history"]:  # resumed after the last step: nothing was validated here
        validate(state["step"])
    final_val = state["val_history"][-1][1] if state["val_history"] else None
    if settings.load_best_at_end and state["best_step"] is not None and state["best_step"] != state["step"]:
        _load_adapter(peft_model, work_dir / f"{BEST_PREFIX}{state['best_step']:08d}")
        final_val = state["best_val"]
        print(f"[recover] best validation loss at step {state['best_step']}: loaded that adapter")
    peft_model.eval()
    hist = state["history"]
    tail = [h[1] for h in hist[-10:]]
    return RecoveryResult(
        steps=state["step"], total_steps=total, n_train=len(train), n_val=len(val),
        first_loss=hist[0][1] if hist else None, train_loss=sum(tail) / len(tail) if tail else None,
        val_loss=final_val, best_step=state["best_step"], resumed_from=resumed_from,
        seconds=time.perf_counter() - t0, history=hist, val_history=state["val_history"])


def recover(model, tokenizer, train_examples: Sequence[dict], val_examples: Sequence[dict],
            settings: LoraSettings, work_dir: str | os.PathLike, progress: bool = True,
            callback: Callable[[int, dict], None] | None = None):
    """Tokenize, wrap with LoRA, train (resumable), merge. Returns (merged model, RecoveryResult, info)."""
    seed_everything(settings.seed)
    train, dropped_t = tokenize_examples(tokenizer, train_examples, settings.cutoff, settings.train_on_inputs, progress)
    val, dropped_v = tokenize_examples(tokenizer, val_examples, settings.cutoff, settings.train_on_inputs, progress)
    peft_model = apply_lora(model, settings)
    result = train_lora(peft_model, train, val, settings, work_dir, _pad_id(tokenizer), progress, callback)
    info = {"dropped_examples": dropped_t + dropped_v,
            "train_tokens_per_epoch": sum(sum(label != IGNORE for label in t["labels"][1:]) for t in train)}
    return merge_lora(peft_model), result, info


def seed_everything(seed: int) -> None:
    """The LoRA A-matrix initialisation and dropout draw from torch's RNG: seed it for repeatable runs."""
    random.seed(seed)
    torch.manual_seed(seed)


def recovery_record(settings: LoraSettings, result: RecoveryResult, data: dict[str, Any],
                    source_checkpoint: str | None = None, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """What goes into the recovered checkpoint's plan (`plan.extra["recovery"]`): settings, data, outcome."""
    return {"method": "lora", "merged": True, "settings": settings.to_dict(), "data": data,
            "source_checkpoint": source_checkpoint, "steps": result.steps, "total_steps": result.total_steps,
            "n_train": result.n_train, "n_val": result.n_val, "first_loss": result.first_loss,
            "train_loss": result.train_loss, "val_loss": result.val_loss, "best_step": result.best_step,
            **(info or {})}
