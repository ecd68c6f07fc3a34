"""HellaSwag doc processing with the same output as lm-eval 0.4.13's `hellaswag/utils.py`.

Written here (not imported from lm-eval's task folder, which is not an importable package API) so the
local task does not depend on lm-eval's file layout; tests/test_tasks.py checks it gives identical docs.
"""

from __future__ import annotations

import re

_BRACKETED = re.compile(r"\[.*?\]")  # WikiHow markup such as "[header]", "[step]"


def clean(text: str) -> str:
    # Same steps, same order as lm-eval: strip, " [title]" -> ". ", drop other [..] tags, one pass of
    # double-space collapsing (only one pass -- that is what lm-eval does, and prompts must match).
    text = text.strip().replace(" [title]", ". ")
    return _BRACKETED.sub("", text).replace("  ", " ")


def _doc(doc: dict) -> dict:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": clean(doc["activity_label"] + ": " + context),
        "choices": [clean(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


# lm-eval asks a task for its docs five times per evaluation and runs process_docs each time (about 3 s for the
# 10,042 docs on 2 cores, 15 s per evaluation); a dataset's fingerprint names its content and history, so the
# mapped dataset is reused. The last few only: one per loaded HellaSwag dataset.
_PROCESSED: dict[str, object] = {}


def process_docs(dataset):
    key = dataset._fingerprint
    if key not in _PROCESSED:
        if len(_PROCESSED) >= 4:
            _PROCESSED.pop(next(iter(_PROCESSED)))
        _PROCESSED[key] = dataset.map(_doc)
    return _PROCESSED[key]
