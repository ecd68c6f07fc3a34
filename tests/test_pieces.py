"""A run killed midway resumes at its unfinished evaluation pieces, and only where nothing that could change a number
has changed (nirvana.evaluation.pieces) — on tiny models."""

import json

import pytest
import torch
from fixture_text import PYDOC_FILE
from hydra import compose, initialize_config_dir
from test_experiments import CONF, TINY

from experiments.run import run_experiment
from nirvana.config import typed
from nirvana.evaluation import perplexity as ppl_mod
from nirvana.evaluation.pieces import Pieces, weights_digest
from nirvana.results import read_rows
from nirvana.tiny import tiny_model


def _cfg(tmp_path, name, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return typed(compose(config_name="run", overrides=[
            *TINY, "pruner=nirvana", "sparsity=0.4", "eval=ppl", "eval.perplexity.seq_len=[16,32]",
            f"eval.perplexity.datasets=[{PYDOC_FILE}]", "eval.perplexity.max_windows=4",
            f"job.results_file={tmp_path / name / 'rows.jsonl'}", f"job.partial_dir={tmp_path / name / 'partial'}",
            *overrides]))


def _numbers(rows):
    """What the rows say, without when and how long anything took."""
    return sorted((r["task"], r["metric"], r["value"], json.dumps({k: v for k, v in r["extra"].items()
                                                                  if k != "seconds"}, sort_keys=True))
                  for r in rows if "seconds" not in r["metric"])


def test_an_interrupted_run_resumes_at_its_unfinished_pieces_with_the_same_rows(tmp_path, monkeypatch):
    whole = run_experiment(_cfg(tmp_path, "whole"), tmp_path / "whole" / "run")  # never interrupted

    real, calls = ppl_mod.evaluate_perplexity, []

    def killed_at_the_second_column(*args, **kwargs):
        calls.append(args[3])  # seq_len
        if len(calls) == 2:
            raise KeyboardInterrupt  # the session ends
        return real(*args, **kwargs)

    monkeypatch.setattr(ppl_mod, "evaluate_perplexity", killed_at_the_second_column)
    c = _cfg(tmp_path, "resumed")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(c, tmp_path / "resumed" / "run1")
    assert not (tmp_path / "resumed" / "rows.jsonl").exists()  # an unfinished run records nothing
    run_id = whole[0]["run_id"]
    kept = list((tmp_path / "resumed" / "partial" / run_id).glob("*.json"))
    assert len(kept) == 1 and "@16" in kept[0].name  # the first column is finished and kept

    calls.clear()
    monkeypatch.setattr(ppl_mod, "evaluate_perplexity", lambda *a, **k: (calls.append(a[3]), real(*a, **k))[1])
    resumed = run_experiment(c, tmp_path / "resumed" / "run2")
    assert calls == [32]  # only the unfinished column is computed again
    assert _numbers(resumed) == _numbers(whole)  # equal to the run that was never interrupted
    assert _numbers(read_rows(tmp_path / "resumed" / "rows.jsonl").to_dict("records")) == _numbers(whole)
    summary = json.loads((tmp_path / "resumed" / "run2" / "summary.json").read_text())
    assert summary["resumed"] == [f"perplexity {PYDOC_FILE}@16"]
    assert not (tmp_path / "resumed" / "partial" / run_id).exists()  # recorded: its pieces are gone

    # job.force recomputes from scratch, kept pieces or not
    calls.clear()
    run_experiment(_cfg(tmp_path, "resumed", "job.force=true"), tmp_path / "resumed" / "run3")
    assert calls == [16, 32]


RUN = {"run_id": "run", "model": "tiny", "checkpoint": "a", "pruner": "nirvana", "sparsity": 0.4, "device": "cpu"}


def test_a_piece_is_reused_only_for_the_same_weights_and_settings(tmp_path):
    model = tiny_model("llama", seed=0)
    computed = []

    def compute(tag):
        return lambda: (computed.append(tag), [{"value": 1.5, "tag": tag, "checkpoint": "a"}])[1]

    first = Pieces(tmp_path, RUN, model).get("ppl", {"seq_len": 16}, compute("a"))
    again = Pieces(tmp_path, RUN, model).get("ppl", {"seq_len": 16}, compute("b"))
    assert first == again == [{"value": 1.5, "tag": "a", "checkpoint": "a"}] and computed == ["a"]
    # where this launch keeps its checkpoint is restamped; any other row column is part of the key
    assert Pieces(tmp_path, {**RUN, "checkpoint": "b"}, model).get("ppl", {"seq_len": 16}, compute("x")) == [
        {"value": 1.5, "tag": "a", "checkpoint": "b"}] and computed == ["a"]
    Pieces(tmp_path, {**RUN, "device": "cuda:0"}, model).get("ppl", {"seq_len": 16}, compute("c"))
    Pieces(tmp_path, RUN, model).get("ppl", {"seq_len": 32}, compute("c"))  # other settings: another piece
    Pieces(tmp_path, {**RUN, "run_id": "other-run"}, model).get("ppl", {"seq_len": 16}, compute("d"))  # another run
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3  # a pruning or recovery that came out differently
    Pieces(tmp_path, RUN, model).get("ppl", {"seq_len": 16}, compute("e"))
    assert computed == ["a", "c", "c", "d", "e"]

    path = next(p for p in (tmp_path / "run").glob("*.json") if json.loads(p.read_text())["rows"][0]["tag"] == "e")
    path.write_text(path.read_text()[:20])  # torn by a kill mid-write
    assert Pieces(tmp_path, RUN, model).get("ppl", {"seq_len": 16}, compute("f"))[0]["tag"] == "f"
    pieces = Pieces(tmp_path, RUN, model)
    pieces.clear()
    assert not (tmp_path / "run").exists()
    assert Pieces(None, RUN, model).get("ppl", {}, compute("g")) and computed[-1] == "g"  # off: always computed


def test_the_weights_digest_sees_every_byte_and_refuses_tensor_subclasses():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=0)
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.model.norm.weight[0] = torch.nextafter(b.model.norm.weight[0], torch.tensor(2.0))  # one ulp
    assert weights_digest(a) != weights_digest(b)

    class Quantized(torch.Tensor):  # as torchao's quantized weights are: a tensor subclass
        pass

    b.lm_head.weight = torch.nn.Parameter(b.lm_head.weight.detach().as_subclass(Quantized), requires_grad=False)
    assert weights_digest(b) is None
