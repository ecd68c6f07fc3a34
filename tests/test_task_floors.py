"""Task floors (docs/protocol.md, "Task floors"): chance and majority-class accuracy from the task definitions — the
logic on documents written here, the shipped snapshot, and (slow) the snapshot recomputed from the built data."""

import json

import pytest

from nirvana.evaluation.chance import SNAPSHOT, compute_floors, data_hashes, floors_of_docs, load_floors


def test_task_floors_come_from_the_task_definition_and_the_shipped_snapshot():
    boolq = [{"label": y} for y in (1, 1, 0, 1)]
    f = floors_of_docs(boolq, lambda d: ["no", "yes"], lambda d: d["label"])
    assert f == {"items": 4, "chance": 0.5, "majority": 0.75, "majority_answer": "yes"}
    assert floors_of_docs(boolq, lambda d: ["no", "yes"], lambda d: ["no", "yes"][d["label"]]) == f  # gold as text
    arc = [{"c": ["a", "b", "c", "d"], "t": 0}, {"c": ["x", "y", "z"], "t": 2}]
    f = floors_of_docs(arc, lambda d: d["c"], lambda d: d["t"])
    assert f["chance"] == pytest.approx((1 / 4 + 1 / 3) / 2) and f["majority"] is None  # item-specific answers
    assert floors_of_docs([{"text": "a b"}], None, lambda d: " b")["chance"] == 0.0  # LAMBADA: open vocabulary
    shipped = load_floors(500)
    assert shipped["boolq"]["majority"] == 0.63 and shipped["boolq"]["majority_answer"] == "yes"
    assert shipped["lambada_openai"]["chance"] == 0.0 and shipped["piqa"]["chance"] == 0.5
    assert load_floors(123) is None


@pytest.mark.slow  # the benchmark data (make assets)
def test_the_shipped_task_floors_are_recomputed_from_the_built_data():
    shipped = json.loads(SNAPSHOT.read_text())
    assert shipped["data_sha256"] == data_hashes()
    assert compute_floors([500]) == {"500": shipped["limits"]["500"]}
