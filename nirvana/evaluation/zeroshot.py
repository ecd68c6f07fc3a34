"""Zero-shot accuracy through stock lm-eval 0.4.13 (never forked, so numbers compare with everyone's).

    HFLM(pretrained=<in-memory model>, tokenizer=…) + lm_eval.simple_evaluate(tasks, TaskManager(include_path))

One metric per task, as the official NIRVANA evaluation reports it (docs/protocol.md), plus their mean.
`suite="local"` (default) runs our offline copies `local_<task>` (nirvana/tasks: lm-eval's prompts on data
from `make assets`); `suite="hub"` runs lm-eval's own tasks, which download their data.

Why the weight guard: HFLM calls `model.tie_weights()` on the model it wraps. For a model whose config says
`tie_word_embeddings` but whose LM head was made a separate tensor (by pruning/fine-tuning code), that call
silently replaces the head by the embedding — the evaluated model would not be the one we were given. We
snapshot the embedding and head before wrapping, put the originals back if HFLM re-tied them, and refuse to
report numbers if the model changed during evaluation (weights re-tied, parameters moved or cast).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import torch

from .. import paths
from ..adapters import get_adapter
from ..texts import LAMBADA_PROBE, Span

# task → the metric the official evaluation reports for it (lm-eval's names)
TASK_METRICS = {
    "arc_challenge": "acc_norm",
    "arc_easy": "acc",
    "boolq": "acc",
    "hellaswag": "acc_norm",
    "lambada_openai": "acc",
    "openbookqa": "acc_norm",
    "piqa": "acc",
    "sciq": "acc",
    "winogrande": "acc",
}
TASKS = tuple(TASK_METRICS)
SUITES = ("local", "hub")
AVERAGE_TASK = "average"
# The items each task scores, by suite: (canonical source of the items, how many the task has). The local
# LAMBADA task scores items 0–2652 only; the rest of LAMBADA's test set is offline probe and calibration text.
TASK_ITEMS = {
    "local": {"arc_easy": ("arc_easy/test", 2376), "arc_challenge": ("arc_challenge/test", 1172),
              "boolq": ("boolq/validation", 3270), "hellaswag": ("hellaswag/validation", 10042),
              "lambada_openai": ("lambada_openai/test", LAMBADA_PROBE), "openbookqa": ("openbookqa/test", 500),
              "piqa": ("piqa/validation", 1838), "sciq": ("sciq/validation", 1000),
              "winogrande": ("winogrande_xl/validation", 1267)},
    "hub": {"arc_easy": ("arc_easy/test", 2376), "arc_challenge": ("arc_challenge/test", 1172),
            "boolq": ("boolq/validation", 3270), "hellaswag": ("hellaswag/validation", 10042),
            "lambada_openai": ("lambada_openai/test", 5153), "openbookqa": ("openbookqa/test", 500),
            "piqa": ("piqa/validation", 1838), "sciq": ("sciq/test", 1000),
            "winogrande": ("winogrande_xl/validation", 1267)},
}

log = logging.getLogger(__name__)


def lm_eval_task_name(task: str, suite: str) -> str:
    if suite != "local":
        return task
    return f"local_lambada_openai_0_{LAMBADA_PROBE}" if task == "lambada_openai" else f"local_{task}"


def task_span(task: str, suite: str = "local", limit: int | float | None = None) -> Span:
    """The items `task` scores under lm-eval's `limit` (the first N, or a fraction) — for disjointness checks."""
    source, n = TASK_ITEMS[suite][task]
    if limit is not None:
        n = min(n, math.ceil(n * limit) if limit < 1 else int(limit))
    return Span(source, 0, n)


def check_tasks(tasks, suite: str = "local") -> list[str]:
    """Validate names (and, for the local suite, that the data is built) without loading anything heavy."""
    if suite not in SUITES:
        raise ValueError(f"unknown zero-shot suite {suite!r}; choose one of {SUITES}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no zero-shot task given")
    unknown = [t for t in tasks if t not in TASK_METRICS]
    if unknown:
        raise ValueError(f"unknown zero-shot task(s) {unknown}; choose from {list(TASKS)}")
    if suite == "local":
        missing = [t for t in tasks if not (paths.data_dir() / f"{t}.jsonl").is_file()]
        if missing:
            raise FileNotFoundError(
                f"benchmark data for {missing} not found in {paths.data_dir()}: run `make assets` "
                "(or use suite=hub where the hub is reachable)"
            )
    return tasks


@dataclass
class TaskScore:
    task: str  # our name (arc_easy), the same in both suites
    lm_eval_task: str  # what lm-eval ran (local_arc_easy / arc_easy)
    metric: str
    value: float
    stderr: float | None
    n: int | None  # items scored
    items: list[float] | None = None  # the metric of each item, in doc_id order 0..n-1 (paired comparisons)


@dataclass
class ZeroShotResult:
    scores: list[TaskScore]
    suite: str
    limit: int | float | None
    lm_eval_version: str
    extra: dict = field(default_factory=dict)

    @property
    def average(self) -> TaskScore:
        """Mean of the per-task metrics; stderr assumes independent tasks: sqrt(Σ se²) / k."""
        values = [s.value for s in self.scores]
        ses = [s.stderr for s in self.scores]
        se = math.sqrt(sum(x * x for x in ses)) / len(ses) if all(x is not None for x in ses) else None
        return TaskScore(AVERAGE_TASK, AVERAGE_TASK, "mean_task_metric", sum(values) / len(values), se, None)

    def to_dict(self) -> dict:
        return asdict(self) | {"average": asdict(self.average)}


# --- the guard ---------------------------------------------------------------------------------------------
def _fingerprint(p: torch.Tensor) -> tuple:
    with torch.no_grad():
        # Identity and storage catch re-tying; a float64 sum catches overwritten values. sum(dtype=float64)
        # accumulates in float64 without materialising a float64 copy (GBs for an 8B model's head).
        total = float(torch.sum(p.detach(), dtype=torch.float64))
        return (id(p), p.data_ptr(), tuple(p.shape), p.dtype, p.device, total)


class WeightGuard:
    """Snapshot of what lm-eval must not change: embedding/head objects and values, dtypes, devices."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.embed = model.get_input_embeddings().weight
        out = model.get_output_embeddings()
        self.head = out.weight if out is not None else None
        self.state = self._state()

    def _state(self) -> dict:
        out = self.model.get_output_embeddings()
        head = out.weight if out is not None else None
        return {
            "embed": _fingerprint(self.model.get_input_embeddings().weight),
            "head": _fingerprint(head) if head is not None else None,
            "tied": head is not None and head is self.model.get_input_embeddings().weight,
            "placement": sorted({(str(p.dtype), str(p.device)) for p in self.model.parameters()}),
            "numel": sum(p.numel() for p in self.model.parameters()),
        }

    def changes(self) -> list[str]:
        now = self._state()
        return [f"{k}: {self.state[k]} → {now[k]}" for k in self.state if now[k] != self.state[k]]

    def restore_embeddings(self) -> None:
        """Put the original embedding/head Parameters back (undoes a re-tie)."""
        self.model.get_input_embeddings().weight = self.embed
        if self.head is not None:
            self.model.get_output_embeddings().weight = self.head

    def check(self, when: str) -> None:
        changed = self.changes()
        if changed:
            raise RuntimeError(f"the model changed {when}; refusing to report its scores: " + "; ".join(changed))


def lm_eval_backend(model) -> str:
    """HFLM's backend for this model's family (its adapter's `lm_eval_backend`)."""
    return get_adapter(model).lm_eval_backend


LMS = ("hf-shared-prefix", "hf")  # lm-eval model classes: ours (nirvana.evaluation.shared_prefix), the stock one
# The dtype of the log-probabilities lm-eval sums per request (its `softmax_dtype`). lm-eval's default, the model's
# dtype, rounds each log-probability to bf16 for a bf16 model and `hf` also sums them in bf16: up to 1.7 nats
# off a float32 reference per request on 20-token continuations (tests/test_zeroshot_precision.py). float32 costs
# nothing measurable (our class takes the log-softmax at continuation positions only) and is a no-op in float32.
SOFTMAX_DTYPES = ("float32", "float64", None)


def check_softmax_dtype(softmax_dtype) -> None:
    if softmax_dtype not in SOFTMAX_DTYPES:
        raise ValueError(f"eval.zeroshot.softmax_dtype={softmax_dtype!r}: choose float32, float64 or null "
                         "(null: lm-eval's default, the model's own dtype)")


def wrap_model(model, tokenizer, batch_size: int = 8, max_length: int | None = None, lm: str = "hf-shared-prefix",
               softmax_dtype: str | None = "float32"):
    """An lm-eval model object around an in-memory model (`lm`: "hf-shared-prefix" — the same answers as "hf",
    lm-eval's own HFLM, with shared prefixes packed; `softmax_dtype`: SOFTMAX_DTYPES), after checking that
    wrapping changed nothing."""
    if lm not in LMS:
        raise ValueError(f"unknown lm-eval model class {lm!r}; choose one of {LMS}")
    check_softmax_dtype(softmax_dtype)
    from lm_eval.models.huggingface import HFLM

    from .shared_prefix import SharedPrefixLM

    guard = WeightGuard(model)
    cls = SharedPrefixLM if lm == "hf-shared-prefix" else HFLM
    wrapped = cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                  backend=lm_eval_backend(model), softmax_dtype=softmax_dtype)
    if guard.changes():
        log.warning("HFLM changed the model while wrapping it (%s); restoring the original weights",
                    "; ".join(guard.changes()))
        guard.restore_embeddings()
    guard.check("when lm-eval wrapped it")
    return wrapped, guard


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None  # lm-eval writes "N/A"


def item_values(samples: list[dict], metric: str, task: str) -> list[float]:
    """Per-item metric values from lm-eval's logged samples, in doc_id order; the ids must be 0..n-1 (what
    `limit` selects), so that two models' item lists pair up by position."""
    by_id = {int(s["doc_id"]): float(s[metric]) for s in samples}
    if sorted(by_id) != list(range(len(by_id))):
        raise RuntimeError(f"{task}: lm-eval scored doc ids {sorted(by_id)[:5]}…, not the first {len(by_id)} items")
    return [by_id[i] for i in range(len(by_id))]


def sample_loglikelihoods(sample: dict) -> list[float]:
    """The log-likelihood of each request of one logged lm-eval sample (one per choice), as floats."""
    def first(x):
        while isinstance(x, (list, tuple)):  # (loglikelihood, is_greedy) pairs, nested one or two deep
            x = x[0]
        return float(x)

    return [first(r) for r in sample["filtered_resps"]]


def task_manager(suite: str = "local", include_path: str | None = None):
    """lm-eval's TaskManager for `suite`: our local task folder (or `include_path`), or lm-eval's own tasks."""
    from lm_eval.tasks import TaskManager

    if suite != "local":
        return TaskManager()
    # Our local tasks are self-contained (data loader and helpers beside them): indexing lm-eval's own ~14k task
    # YAMLs as well would cost ~6 s per call (measured) for nothing. A user's include_path may build on them.
    return TaskManager(include_path=str(include_path or paths.tasks_dir()), include_defaults=include_path is not None)


def evaluate_zeroshot(model, tokenizer, tasks=TASKS, suite: str = "local", limit: int | float | None = None,
                      batch_size: int = 8, max_length: int | None = None, bootstrap_iters: int = 100000,
                      include_path: str | None = None, lm: str = "hf-shared-prefix",
                      softmax_dtype: str | None = "float32") -> ZeroShotResult:
    """Run lm-eval on `tasks` (our names, e.g. "arc_easy") and return the official metric of each.

    `limit`: lm-eval's — the first N items of each task (a float < 1: that fraction); None: all.
    `max_length`: pass it for long-context models (SmolLM2's 8192 makes lm-eval allocate ~26 GB).
    `bootstrap_iters`: lm-eval's default; it only matters for LAMBADA's perplexity stderr (acc stderrs are
    analytic), so a smaller number saves time without touching reported numbers; 0 drops every stderr.
    `lm`: the lm-eval model class (`wrap_model`); its batch_size counts requests for "hf", packed rows for ours.
    `softmax_dtype`: the dtype log-probabilities are computed and summed in (SOFTMAX_DTYPES; matters for bf16).
    """
    import lm_eval

    tasks = check_tasks(tasks, suite)
    if limit is not None and not limit > 0:
        raise ValueError(f"limit must be > 0 or null, got {limit}")
    names = {t: lm_eval_task_name(t, suite) for t in tasks}
    manager = task_manager(suite, include_path)
    wrapped, guard = wrap_model(model, tokenizer, batch_size, max_length, lm, softmax_dtype)
    out = lm_eval.simple_evaluate(model=wrapped, tasks=list(names.values()), task_manager=manager, limit=limit,
                                  log_samples=True, bootstrap_iters=bootstrap_iters)
    guard.check("during lm-eval's evaluation")
    scores = []
    for task, name in names.items():
        res = out["results"][name]
        metric = TASK_METRICS[task]
        n = out.get("n-samples", {}).get(name, {}).get("effective")
        scores.append(TaskScore(task, name, metric, float(res[f"{metric},none"]),
                                _number(res.get(f"{metric}_stderr,none")), n,
                                item_values(out["samples"][name], metric, name)))
    extra = {"task_versions": {t: out.get("versions", {}).get(n) for t, n in names.items()},
             "batch_size": batch_size, "max_length": max_length, "lm": lm, "backend": getattr(wrapped, "backend", None),
             "softmax_dtype": softmax_dtype}
    return ZeroShotResult(scores, suite, limit, lm_eval.__version__, extra)
