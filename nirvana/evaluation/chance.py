"""Chance and majority-class accuracy of each zero-shot task on the items a run scores: the floors a pruned model's
accuracy is read against (docs/protocol.md, "Task floors").

- `chance`: the expected accuracy of a uniform random choice — the mean over the scored items of 1 / (number of
  choices); 0 for LAMBADA (its answer is the next word, out of the whole vocabulary);
- `majority`: the accuracy of always giving the most frequent gold answer, where every item offers the same
  answers (BoolQ: no / yes — a model that always says "yes" scores it). Where the choices are item-specific
  texts (every other task) no constant answer exists: lm-eval scores each choice's text after the context, never
  its position, so `None`.

Both are read from the task definitions themselves — lm-eval's `doc_to_choice` / `doc_to_target` of our local
tasks on the built data — for the first `limit` items, as lm-eval's `limit` selects them. `python -m
experiments.task_floors` writes them to `task_floors.json` beside this module (with the data files' hashes), so a
report needs no built assets; a slow test recomputes the file from the data.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from .. import paths
from .zeroshot import TASKS, lm_eval_task_name, task_manager

SNAPSHOT = Path(__file__).with_name("task_floors.json")
FULL = "full"  # the snapshot's key for no limit


def floors_of_docs(docs: Iterable[dict], choices: Callable[[dict], list] | None,
                   target: Callable[[dict], object]) -> dict:
    """{"items", "chance", "majority", "majority_answer"} of one task's scored documents. `choices` None: an
    open-vocabulary task (chance 0, no constant answer); `target`: the gold answer, an index or a choice's text."""
    docs = list(docs)
    if not docs:
        raise ValueError("no documents to take the floors of")
    if choices is None:
        return {"items": len(docs), "chance": 0.0, "majority": None, "majority_answer": None}
    options = [list(choices(d)) for d in docs]
    chance = sum(1 / len(o) for o in options) / len(docs)
    if any(o != options[0] for o in options):  # item-specific answers: no constant one to give
        return {"items": len(docs), "chance": chance, "majority": None, "majority_answer": None}
    gold = [t if isinstance(t := target(d), int) else options[0].index(t) for d in docs]
    index, count = Counter(gold).most_common(1)[0]
    return {"items": len(docs), "chance": chance, "majority": count / len(docs),
            "majority_answer": str(options[0][index])}


def compute_floors(limits: Iterable[int | None] = (None,), suite: str = "local") -> dict:
    """{limit key: {task: floors}} from lm-eval's task objects on the built data (`make assets`): minutes of
    nothing but document processing, no model."""
    from lm_eval.tasks import get_task_dict

    names = {t: lm_eval_task_name(t, suite) for t in TASKS}
    tasks = get_task_dict(list(names.values()), task_manager(suite))
    out = {}
    for limit in limits:
        key = FULL if limit is None else str(int(limit))
        out[key] = {}
        for task, name in names.items():
            t = tasks[name]
            docs = list(t.eval_docs)
            docs = docs if limit is None else docs[: int(limit)]
            mc = t.OUTPUT_TYPE == "multiple_choice"
            out[key][task] = floors_of_docs(docs, t.doc_to_choice if mc else None, t.doc_to_target)
    return out


def data_hashes() -> dict[str, str]:
    """The sha256 of each task's built data file, from the asset manifest (what the floors were computed on)."""
    manifest = json.loads((paths.data_dir() / "manifest.json").read_text())
    return {t: manifest["files"][f"{t}.jsonl"]["sha256"] for t in TASKS}


def write_snapshot(limits: Iterable[int | None], path: str | Path = SNAPSHOT) -> Path:
    limits = list(limits)
    snapshot = {"suite": "local", "data_sha256": data_hashes(), "limits": compute_floors(limits)}
    Path(path).write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    return Path(path)


def load_floors(limit, path: str | Path = SNAPSHOT) -> dict[str, dict] | None:
    """{task: floors} of the snapshot for lm-eval's `limit` (None / NaN: all items); None where it has none."""
    if not Path(path).is_file():
        return None
    limits = json.loads(Path(path).read_text())["limits"]
    key = FULL if limit is None or limit != limit else str(int(limit))
    return limits.get(key)
