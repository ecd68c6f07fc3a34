"""Zero-shot through stock lm-eval on an in-memory model; the guard against lm-eval changing the model."""

import pytest
import torch

from nirvana.evaluation import zeroshot as Z
from nirvana.tiny import tiny_model

needs_data = pytest.mark.slow  # reads the built benchmark data (make assets)


@needs_data
def test_tiny_model_on_one_local_task(tokenizer):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = Z.evaluate_zeroshot(model, tokenizer, ["arc_challenge"], limit=5, batch_size=4, max_length=256,
                              bootstrap_iters=100)
    (score,) = res.scores
    assert (score.task, score.lm_eval_task, score.metric, score.n) == ("arc_challenge", "local_arc_challenge",
                                                                       "acc_norm", 5)
    assert score.value in {i / 5 for i in range(6)} and score.stderr is not None
    assert res.limit == 5 and res.suite == "local" and res.lm_eval_version == "0.4.13"
    assert res.average.value == score.value
    for k, v in model.state_dict().items():  # lm-eval must leave the weights alone
        assert torch.equal(v, before[k]), k


def test_hflm_re_tying_a_separate_head_is_undone(tokenizer):
    """HFLM calls model.tie_weights(); with tie_word_embeddings=True in the config that would replace a head
    that has become its own tensor (e.g. after fine-tuning) by the embedding."""
    model = tiny_model("qwen2")  # tied config
    head = torch.nn.Parameter(model.lm_head.weight.detach() * 2)
    model.lm_head.weight = head
    _, guard = Z.wrap_model(model, tokenizer, batch_size=1, max_length=256)
    assert model.lm_head.weight is head
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert guard.changes() == []


def test_guard_refuses_a_model_that_changed(tokenizer):
    model = tiny_model("llama")
    guard = Z.WeightGuard(model)
    model.to(torch.float64)
    with pytest.raises(RuntimeError, match="refusing to report"):
        guard.check("during the test")


def test_average_and_its_stderr():
    res = Z.ZeroShotResult([Z.TaskScore("a", "a", "acc", 0.5, 0.03, 10), Z.TaskScore("b", "b", "acc", 0.7, 0.04, 10)],
                           "local", None, "0.4.13")
    assert res.average.value == pytest.approx(0.6)
    assert res.average.stderr == pytest.approx(0.025)  # sqrt(0.03² + 0.04²) / 2


def test_bad_tasks_fail_fast():
    with pytest.raises(ValueError, match="unknown zero-shot task"):
        Z.check_tasks(["arc_easy", "mmlu_pro"])
    with pytest.raises(ValueError, match="unknown zero-shot suite"):
        Z.check_tasks(["arc_easy"], suite="cloud")
    assert Z.check_tasks(["piqa"], suite="hub") == ["piqa"]  # hub: no local data needed
    assert set(Z.TASK_METRICS) == {"arc_challenge", "arc_easy", "boolq", "hellaswag", "lambada_openai",
                                   "openbookqa", "piqa", "sciq", "winogrande"}
