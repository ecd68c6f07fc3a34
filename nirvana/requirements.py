"""Fail fast, before any heavy work, when a run needs a GPU or the Hugging Face hub and has neither."""

from __future__ import annotations

import os
import socket
from pathlib import Path

HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout: float = 5.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def is_hub_model(name_or_path: str) -> bool:
    return not (name_or_path.startswith(("builtin:", "tiny:")) or Path(name_or_path).exists())


def check_requirements(gpu: bool = False, hub: bool = False, what: str = "this run") -> None:
    import torch

    missing = []
    if gpu and not torch.cuda.is_available():
        missing.append("a CUDA GPU (none is visible to torch)")
    if hub and not hub_reachable():
        missing.append("the Hugging Face hub (unreachable, or HF_HUB_OFFLINE is set)")
    if missing:
        raise SystemExit(
            f"{what} needs " + " and ".join(missing) + ". Nothing was loaded. Offline, run the same sweep on the "
            "embedded default: make reproduce-table2 MODEL=smollm2_135m"
        )
