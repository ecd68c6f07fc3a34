"""Loading the model to prune: hub ids, local folders, the offline assets (SmolLM2; Qwen2.5-Coder on request),
tiny test models.

Device and dtype follow the paper's set-up by default: CUDA in bf16 when a GPU is present, else CPU in
float32 (bf16 matmuls are slow on CPUs, and fp32 is where plans match the official ones bit for bit).
`device_map` passes through to accelerate for models larger than one GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING

from . import paths
from .adapters import adapter_class_for
from .schema import later, unhashed


@dataclass
class ModelConfig:
    """The model to load (conf/model/*.yaml): a hub id, a local folder, `builtin:<asset>` or `tiny:<family>`."""

    name: str = MISSING  # what rows and tables call it
    name_or_path: str = MISSING
    path: str | None = later(None)  # a checkpoint folder (dense or pruned): wins over name_or_path
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU (module docstring)
    device: str = "auto"
    device_map: Any = None  # accelerate's device_map ("auto" spreads a model over several GPUs)
    trust_remote_code: bool | None = unhashed(None)  # run the folder's own code? None: only our pruned checkpoints
    max_length: int | None = None  # lm-eval's context cap (long contexts make rolling loglikelihood allocate a lot)
    prefix_fraction: float | None = later(None)  # seq2seq protocol: share of each window fed to the encoder

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"model.max_length must be ≥ 1 or null, got {self.max_length}")
        if self.prefix_fraction is not None and not 0 < self.prefix_fraction < 1:
            raise ValueError(f"model.prefix_fraction must lie in (0, 1), got {self.prefix_fraction}")
        resolve_dtype(self.dtype, "cpu")  # names the accepted dtypes

# `builtin:<name>` → (the asset folder, the command that builds it)
BUILTIN = {"smollm2-135m-instruct": (paths.smollm2_dir, "make assets"),
           "qwen2.5-coder-0.5b-instruct": (paths.qwen2_5_coder_dir, "make assets MODELS=qwen2.5_coder_0.5b")}


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto or one of {sorted(table)}")
    return table[dtype]


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA device is available")
    return device


def resolve_path(name_or_path: str) -> str:
    """`builtin:<name>` → the offline asset folder (with a clear error if `make assets` has not run)."""
    if name_or_path.startswith("builtin:"):
        name = name_or_path.split(":", 1)[1]
        if name not in BUILTIN:
            raise ValueError(f"unknown builtin model {name!r}; choose one of {sorted(BUILTIN)}")
        folder, command = BUILTIN[name][0](), BUILTIN[name][1]
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"the offline model {name} is not built at {folder}: run `{command}`")
        return str(folder)
    return name_or_path


MODELING_FILE = "modeling_nirvana.py"  # what save_pruned ships in a pruned checkpoint (nirvana.surgery.checkpoint)


def trusts_code(path: str, setting: bool | None = None) -> bool:
    """Whether to run a model folder's own Python (transformers' trust_remote_code). `setting` (the model config's
    `trust_remote_code`) decides when given; by default only our own pruned checkpoints — local folders whose
    code is the modeling file we wrote and ship — are trusted, never a hub id chosen by a config."""
    if setting is not None:
        return bool(setting)
    return (Path(path) / MODELING_FILE).is_file()


def read_config(name_or_path: str, trust: bool | None = None):
    """The model's transformers config, without its weights: a missing or corrupt folder fails here, clearly."""
    from transformers import AutoConfig

    if name_or_path.startswith("tiny:"):
        from .tiny import TINY_T5_VARIANTS, tiny_config, tiny_t5_config

        family = name_or_path.split(":", 1)[1]
        return tiny_t5_config(family) if family in TINY_T5_VARIANTS else tiny_config(family)
    path = resolve_path(name_or_path)
    local = Path(path)
    if local.exists() and not (local / "config.json").is_file():
        raise FileNotFoundError(f"model {path}: a folder without config.json (not a model checkpoint)")
    if not local.exists() and "/" not in path:
        raise FileNotFoundError(f"model {path!r} is neither a local folder nor a hub id (owner/name)")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trusts_code(path, trust))
    except (OSError, ValueError) as e:  # unreadable JSON, unknown model_type, …
        raise ValueError(f"model {path}: its config cannot be read ({type(e).__name__}: {e})") from e


def skeleton(config):
    """The model's modules with no weights (PyTorch's meta device): unit counts and costs for checks made before
    anything is loaded, at no memory cost."""
    with torch.device("meta"):
        return auto_class_for(config).from_config(config)


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = "auto",
    device_map: str | dict | None = None,
    trust_remote_code: bool | None = None,
):
    """Return (model in eval mode, tokenizer). `tiny:<family>` builds a random tiny model for smoke runs
    (`tiny:t5` / `tiny:flan_t5`: encoder–decoders). Encoder–decoder configs (T5) load as seq2seq LMs.
    `trust_remote_code`: None applies the default policy (`trusts_code`)."""
    from transformers import AutoTokenizer

    if name_or_path.startswith("tiny:"):
        from .tiny import TINY_T5_VARIANTS, tiny_model, tiny_t5_model, tiny_tokenizer

        family = name_or_path.split(":", 1)[1]
        model = tiny_t5_model(family) if family in TINY_T5_VARIANTS else tiny_model(family)
        return model, tiny_tokenizer()
    path = resolve_path(name_or_path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if not Path(path).exists() and "/" not in path:
        raise FileNotFoundError(f"model {path!r} is neither a local folder nor a hub id (owner/name)")
    trust = trusts_code(path, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    model = auto_model_class(path, trust).from_pretrained(
        path, dtype=torch_dtype, device_map=device_map, trust_remote_code=trust
    )
    if device_map is None:
        model.to(device)
    return model.eval(), tokenizer


def load_from_config(m: ModelConfig) -> tuple:
    """(model, tokenizer) from a model config: `path` (a checkpoint folder) wins over `name_or_path`; protocol
    settings the model carries (a seq2seq model's `prefix_fraction`) are set on its config, where its adapter reads
    them and its saved checkpoint records them."""
    model, tokenizer = load_model(m.path or m.name_or_path, m.dtype, m.device, m.device_map, m.trust_remote_code)
    if m.prefix_fraction is not None:
        model.config.nirvana_prefix_fraction = float(m.prefix_fraction)
    return model, tokenizer


def auto_class_for(config):
    """The transformers Auto class of the model's family (its adapter's `auto_model_class`)."""
    import transformers

    return getattr(transformers, adapter_class_for(config.model_type).auto_model_class)


def auto_model_class(path: str, trust: bool = False):
    """The Auto class that loads the checkpoint at `path` (AutoModelForSeq2SeqLM for T5, else AutoModelForCausalLM)."""
    from transformers import AutoConfig

    return auto_class_for(AutoConfig.from_pretrained(path, trust_remote_code=trust))
