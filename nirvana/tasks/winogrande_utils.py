"""WinoGrande "partial evaluation" as in lm-eval 0.4.13's winogrande task (its `preprocess_winogrande.py`).

The blank `_` splits the sentence: each option filled in gives one *context* (sentence up to the blank),
and the model scores the shared *continuation* (the rest of the sentence) after each. So the choices are
contexts, the target is the continuation, and "doc_to_text" returns the gold option's index.
"""

from __future__ import annotations


def doc_to_text(doc: dict) -> int:
    return {"1": 0, "2": 1}[doc["answer"]]


def doc_to_target(doc: dict) -> str:
    blank = doc["sentence"].index("_")
    return doc["sentence"][blank + 1 :].strip()


def doc_to_choice(doc: dict) -> list[str]:
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]
