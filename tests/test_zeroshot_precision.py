"""In what dtype lm-eval's log-probabilities are summed: for a bf16 model, lm-eval's default (the model's dtype)
lands far from a float32 reference; eval.zeroshot.softmax_dtype=float32 (our default) brings both lm-eval
classes back to it. A tiny random bf16 Llama and the nine-task-shaped requests of the GPU check."""

import pytest
import torch

from nirvana.bench.models import random_llama
from nirvana.bench.zeroshot import answer_gaps, mixed_requests
from nirvana.evaluation.config import ZeroshotConfig
from nirvana.evaluation.zeroshot import wrap_model
from nirvana.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def answers():
    model = random_llama("llama-tiny-shape", "cpu", torch.bfloat16)
    tokenizer = tiny_tokenizer(1024)

    def run(lm, softmax_dtype):
        wrapped, _ = wrap_model(model, tokenizer, 8, 2048, lm, softmax_dtype)
        requests = [((c, x), *wrapped._encode_pair(c, x)) for c, x in mixed_requests(3)]
        return wrapped._loglikelihood_tokens(requests, disable_tqdm=True)

    got = {(lm, d): run(lm, d) for lm in ("hf", "hf-shared-prefix") for d in (None, "float32")}
    model.float()  # the reference: lm-eval's own class on the same weights in float32
    return got, run("hf", "float32")


@pytest.mark.parametrize("lm", ["hf", "hf-shared-prefix"])
def test_a_float32_softmax_puts_a_bf16_model_next_to_its_float32_self(answers, lm):
    got, reference = answers
    fp32 = answer_gaps(got[(lm, "float32")], reference)
    assert fp32["max_abs"] < 0.05 and fp32["same_greedy"] == 1.0
    default = answer_gaps(got[(lm, None)], reference)
    assert default["mean_abs"] > 5 * fp32["mean_abs"]  # bf16 log-probabilities: the error the option removes


def test_lm_evals_default_also_sums_in_bf16_in_its_own_class(answers):
    """`hf` sums a request's token log-probabilities in the tensor's dtype: in bf16 whole nats go (the spacing
    of bf16 numbers near −100 is 0.5); ours sums in Python floats, so only the per-token rounding remains."""
    got, reference = answers
    hf, ours = answer_gaps(got[("hf", None)], reference), answer_gaps(got[("hf-shared-prefix", None)], reference)
    assert hf["max_abs"] > 0.5 and ours["max_abs"] < hf["max_abs"] / 3


def test_an_unknown_softmax_dtype_is_refused_before_any_model():
    with pytest.raises(ValueError, match="softmax_dtype='bfloat16'.*float32, float64 or null"):
        ZeroshotConfig(tasks=["arc_easy"], softmax_dtype="bfloat16")
