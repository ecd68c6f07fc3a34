"""Result rows: schema, run ids, crash-safe appends, reading back."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

from nirvana import results as R
from nirvana.atomic import stale_tmp

RUN = {"run_id": "abc", "model": "tiny", "pruner": "nirvana", "sparsity": 0.2, "gamma": 3.36,
       "calibration_source": "pydoc", "calibration_seed": 0, "calibration_selection": "none",
       "dtype": "float32", "device": "cpu"}


def rows(n, run=RUN):
    return [R.make_row(run, "arc_easy", "acc", 0.5 + i / 100, 0.05, limit=100, n=100, suite="local") for i in range(n)]


def test_run_id_is_stable_and_order_free():
    a = R.make_run_id({"model": {"name": "x", "dtype": "auto"}, "eval": {"limit": 100}})
    b = R.make_run_id({"eval": {"limit": 100}, "model": {"dtype": "auto", "name": "x"}})
    assert a == b and len(a) == 12
    assert a != R.make_run_id({"model": {"name": "x", "dtype": "auto"}, "eval": {"limit": 50}})


def test_row_schema_and_provenance():
    row = R.make_row(RUN, "wiki_passages", "ppl/wiki_passages@512", float("nan"), seq_len=512)
    assert tuple(row) == R.ROW_FIELDS
    assert row["value"] is None  # NaN is not JSON
    assert row["lm_eval_version"] == "0.4.13" and row["torch_version"] and row["transformers_version"]
    assert row["git_hash"] and row["timestamp"].endswith("+00:00")
    assert row["checkpoint"] is None and row["calibration_source"] == "pydoc"
    with pytest.raises(ValueError, match="run_id"):
        R.make_row({}, "t", "m", 1.0)


def test_append_and_read_back(tmp_path):
    f = tmp_path / "sub" / "rows.jsonl"
    assert R.append_rows(f, rows(3)) == 3
    R.append_rows(f, rows(2, RUN | {"run_id": "def"}))
    df = R.read_rows(f)
    assert list(df.columns[: len(R.ROW_FIELDS)]) == list(R.ROW_FIELDS)
    assert len(df) == 5 and df["value"].iloc[0] == 0.5
    assert R.completed_run_ids(f) == {"abc", "def"}
    assert len(R.read_rows([f, f, tmp_path / "missing.jsonl"])) == 10
    empty = R.read_rows(tmp_path / "missing.jsonl")
    assert len(empty) == 0 and list(empty.columns) == list(R.ROW_FIELDS)


WRITER = textwrap.dedent(
    """
    import sys
    from nirvana import results
    blob = "x" * 20_000  # large rows: each batch takes a while to write, so a kill lands inside one
    for i in range(10_000):
        batch = [results.make_row({"run_id": f"r{i}"}, "t", "m", float(j), extra={"blob": blob}) for j in range(50)]
        results.append_rows(sys.argv[1], batch)
    """
)


@pytest.mark.parametrize("delay", [0.4, 0.9, 1.7])
def test_kill_9_mid_write_loses_only_the_batch_being_written(tmp_path, delay):
    """A real writer process killed with SIGKILL at an arbitrary moment: the file holds whole batches only, and
    the next writer removes the half-written temp file it left."""
    f = tmp_path / "rows.jsonl"
    R.append_rows(f, rows(2))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(f)])
    deadline = time.monotonic() + 60
    while (not f.exists() or f.stat().st_size < 2_000_000) and time.monotonic() < deadline:
        time.sleep(0.05)  # let a few batches land first
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    counts = Counter(json.loads(line)["run_id"] for line in f.read_text().splitlines())  # every line parses
    assert counts.pop("abc") == 2 and counts and set(counts.values()) == {50}  # whole batches, nothing torn
    R.append_rows(f, rows(1, RUN | {"run_id": "next"}))
    assert not stale_tmp(tmp_path, f.name)  # the next writer cleaned up after the killed one
    assert R.completed_run_ids(f) == {"abc", "next", *counts}


def test_a_torn_last_line_from_another_tool_is_ignored_then_dropped(tmp_path):
    f = tmp_path / "rows.jsonl"
    R.append_rows(f, rows(2))
    with open(f, "a") as fh:
        fh.write('{"run_id": "torn", "val')
    df = R.read_rows(f)
    assert len(df) == 2 and set(df["run_id"]) == {"abc"}
    R.append_rows(f, rows(1, RUN | {"run_id": "next"}))
    assert [json.loads(line)["run_id"] for line in f.read_text().splitlines()] == ["abc", "abc", "next"]


def test_a_torn_file_without_any_newline_is_reset(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"run_id": "x", "val')
    assert len(R.read_rows(f)) == 0
    R.append_rows(f, rows(1))
    assert len(R.read_rows(f)) == 1


def test_a_corrupt_complete_line_is_skipped_with_a_warning(tmp_path):
    f = tmp_path / "rows.jsonl"
    R.append_rows(f, rows(1))
    with open(f, "a") as fh:
        fh.write("not json\n")
    R.append_rows(f, rows(1))
    with pytest.warns(UserWarning, match=":2: skipping"):
        assert len(R.read_rows(f)) == 2

