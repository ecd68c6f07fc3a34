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


def process_docs(dataset):
    return dataset.map(_doc)
