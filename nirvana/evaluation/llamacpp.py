"""The evidence protocol as llama.cpp runs the model: export it (pruned or dense) to a `deci` GGUF, then perplexity
through llama.cpp on exactly the windows transformers is scored on (docs/deploy.md).

The windows come from nirvana.evaluation.perplexity itself (same join, tokenization, cut and limits; only the forward
is llama.cpp's), and each row keeps every window's summed NLL, so the report pairs a GGUF row with the transformers
row of the same model window by window (`python -m experiments.report ... --reference base`). Its rows say what
ran in their `dtype` column — `gguf-f16`, `gguf-q8_0`, `gguf-q4_k_m`, `gguf-f32` — which the tables show as a stage
after pruning, e.g. `nirvana (γ=3.36) [gguf-q8_0]`.

A run (conf/deploy/llamacpp.yaml, a stage of experiments.run):
    python -m experiments.run pruner=nirvana sparsity=0.2 eval=ppl deploy=llamacpp deploy.type=q8_0
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import schema
from ..deploy import export as export_mod
from ..deploy import runtime
from ..results import make_row
from . import perplexity as ppl_mod
from .pieces import Pieces

GGUF_FILE = "model.gguf"


def window_scorer(llm, progress: bool = True):
    """`scorer` for nirvana.evaluation.perplexity.evaluate_perplexity: each window run alone by llama.cpp (a fresh
    sequence), its NLL from llama.cpp's logits with the same float32 cross-entropy as the transformers path."""

    def score(windows: torch.Tensor, desc: str) -> tuple[list[float], int]:
        sums = []
        for window in tqdm(windows, desc=f"{desc} (llama.cpp)", disable=not progress):
            logits = torch.from_numpy(runtime.logits(llm, window.tolist()))
            loss = F.cross_entropy(logits[:-1], window[1:], reduction="none")
            sums.append(loss.double().sum().item())
        return sums, windows.shape[1] - 1

    return score


def gguf_perplexity(gguf_path, tokenizer, dataset: str, seq_len: int = 512, max_texts: int | None = None,
                    max_windows: int | None = None, max_tokens: int | None = None, texts=None, n_threads: int | None = None,
                    exact: bool = True, progress: bool = True) -> ppl_mod.PerplexityResult:
    """Perplexity of a GGUF through llama.cpp with the official protocol (`tokenizer`: the source model's)."""
    llm = runtime.load(gguf_path, n_ctx=seq_len, n_threads=n_threads, exact=exact)
    return ppl_mod.evaluate_perplexity(None, tokenizer, dataset, seq_len, max_texts=max_texts, max_windows=max_windows,
                                       max_tokens=max_tokens, texts=texts, progress=progress,
                                       scorer=window_scorer(llm, progress))


@dataclass
class DeployStage:
    """conf/deploy/llamacpp.yaml: after pruning (and recovery), export a GGUF of `gguf_type` and evaluate it in
    llama.cpp instead of transformers."""

    gguf_type: str = "f16"
    threads: int | None = None  # llama.cpp threads (None: every core this process may use)
    exact: bool = True  # f32 KV cache, no flash attention (nirvana.deploy.runtime): only the weights differ
    keep: bool = False  # keep the GGUF in the run folder (it is as large as the model)
    out_dir: Path | None = None

    @classmethod
    def from_config(cls, config, out_dir) -> DeployStage | None:
        """From a typed run config (its `deploy`: a nirvana.deploy.config.DeployConfig, or None: no such stage),
        checked against the rest of the run before any model loads."""
        d = config.deploy
        if d is None:
            return None
        e = config.eval
        if not e.perplexity or e.zeroshot or e.speed:
            raise ValueError(f"deploy=llamacpp evaluates perplexity only (eval={e.name} enables "
                             f"{[k for k in ('perplexity', 'zeroshot', 'speed') if getattr(e, k)]}); set "
                             "eval.zeroshot=null and eval.speed=null (llama.cpp speed: `make bench` section llamacpp; "
                             "zero-shot: docs/deploy.md)")
        if config.quant is not None:
            raise ValueError("deploy=llamacpp exports the float model and quantizes with llama.cpp's own quantizer "
                             "(deploy.type=q8_0 | q4_k_m); drop quant=…")
        runtime.require()  # before the model loads
        return cls(d.type, d.threads, d.exact, d.keep, Path(out_dir))

    def label(self) -> str:
        return f"gguf-{self.gguf_type}"

    def columns(self) -> dict[str, str]:
        """The run's columns that say what was evaluated: llama.cpp on the CPU, this GGUF type."""
        return {"dtype": self.label(), "device": "cpu"}

    def evaluation_rows(self, e, run: dict[str, Any], model, tokenizer, texts, progress: bool = True,
                        pieces: Pieces | None = None) -> list[dict]:
        """Export, then every perplexity of the protocol `e` through llama.cpp (same signature as
        nirvana.evaluation.protocol.evaluation_rows). `pieces`: the export's rows and each perplexity column are
        pieces an interrupted launch may have finished; the GGUF is written only if something is left to compute."""
        pieces = pieces or Pieces(None, run)
        p = e.perplexity
        settings = {"gguf_type": self.gguf_type, "exact": self.exact, "llama_cpp_version": runtime.version(),
                    "perplexity": schema.identity(p)}
        with tempfile.TemporaryDirectory(prefix="nirvana-gguf-") as scratch:
            state: dict[str, Any] = {}

            def exported() -> dict[str, Any]:  # once, on the first piece that needs the GGUF
                if not state:
                    folder = self.out_dir if self.keep and self.out_dir is not None else Path(scratch)
                    result = export_mod.export_gguf(model, tokenizer, folder / GGUF_FILE, self.gguf_type,
                                                    self.threads, overwrite=True, progress=progress)
                    state["result"] = result
                    state["common"] = {"runtime": "llama.cpp", "llama_cpp_version": runtime.version(),
                                       "gguf_type": self.gguf_type, "exact": self.exact,
                                       "threads": self.threads or runtime.default_threads()}
                    state["llm"] = runtime.load(result.path, n_ctx=max(int(s) for s in p.seq_len),
                                                n_threads=self.threads, exact=self.exact)
                return state

            def export_rows() -> list[dict]:
                result, common = exported()["result"], state["common"]
                summary = result.summary() | {"path": str(result.path) if self.keep else None}
                return [make_row(run, "deploy", "gguf_bytes", result.bytes, extra=common | summary),
                        make_row(run, "deploy", "fallback_tensors", len(result.fallbacks), extra=common | summary)]

            def column(dataset, seq_len) -> list[dict]:
                llm, common = exported()["llm"], state["common"]
                t0 = time.perf_counter()
                r = ppl_mod.evaluate_perplexity(None, tokenizer, dataset, int(seq_len), max_texts=p.max_texts,
                                                max_windows=p.max_windows, max_tokens=p.max_tokens,
                                                texts=texts[dataset], progress=progress,
                                                scorer=window_scorer(llm, progress))
                return [make_row(run, r.dataset, r.metric, r.ppl, seq_len=r.seq_len, limit=r.limit, n=r.n_tokens,
                                 extra=common | {"n_windows": r.n_windows, "nll": r.nll, "window_nll": r.window_nll,
                                                 "window_tokens": r.n_tokens // r.n_windows,
                                                 "seconds": round(time.perf_counter() - t0, 2)})]

            rows = list(pieces.get("gguf export", settings, export_rows))
            for dataset in p.datasets:
                for seq_len in p.seq_len:
                    rows += pieces.get(f"perplexity {dataset}@{seq_len}", settings,
                                       lambda d=dataset, n=seq_len: column(d, n))
            state.pop("llm", None)  # frees llama.cpp's model before the scratch folder (its file) goes
        return rows
