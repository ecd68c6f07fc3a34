import random

import pytest
import torch

from nirvana.calibration import build_calibration, join_consecutive, sample_windows
from nirvana.tiny import pydoc_text


@pytest.fixture(scope="module")
def texts():
    return [p for p in pydoc_text().split("\n\n") if len(p) > 50]


def test_windows_are_exact_distinct_and_reproducible(texts, tokenizer):
    a = sample_windows(texts, tokenizer, 16, 24, seed=12)
    b = sample_windows(texts, tokenizer, 16, 24, seed=12)
    c = sample_windows(texts, tokenizer, 16, 24, seed=13)
    assert a.shape == (16, 24) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_same_draws_as_the_official_sampler(texts, tokenizer):
    """Replays the official loop literally (random.seed, randint over texts, randint window start)."""
    n, t, seed = 6, 20, 5
    random.seed(seed)
    pool = [x for x in texts if len(x) > t]
    history, out = [], []
    for _ in range(n):
        while True:
            i = random.randint(0, len(pool) - 1)
            ids = tokenizer(pool[i], return_tensors="pt").input_ids
            if ids.shape[1] >= t and i not in history:
                history.append(i)
                break
        i = random.randint(0, ids.shape[1] - t)
        out.append(ids[:, i : i + t])
    assert torch.equal(sample_windows(texts, tokenizer, n, t, seed), torch.cat(out))


def test_windows_come_from_distinct_texts(tokenizer):
    texts = [(letter + " ") * 100 for letter in "abcde"]  # each text uses one letter only
    ids = sample_windows(texts, tokenizer, 5, 8, seed=0)
    letters = [set(tokenizer.decode(row).split()) for row in ids]
    assert all(len(s) == 1 for s in letters)
    assert set().union(*letters) == set("abcde")


def test_source_too_small_names_both_numbers(tokenizer):
    texts = ["short"] * 10 + ["a long enough text " * 20] * 2
    with pytest.raises(ValueError, match=r"only 2 usable texts .* 3 samples of 16 tokens"):
        sample_windows(texts, tokenizer, 3, 16, seed=0)


def test_join_consecutive():
    assert join_consecutive(["a", "b", "c", "d", "e"], 2) == ["a\n\nb", "c\n\nd", "e"]


def test_tensor_source_roundtrip(tmp_path):
    ids = torch.randint(0, 100, (4, 8))
    torch.save(ids, tmp_path / "c.pt")
    assert torch.equal(build_calibration("tensor", path=str(tmp_path / "c.pt")), ids)
    with pytest.raises(FileNotFoundError):
        build_calibration("tensor", path=str(tmp_path / "missing.pt"))
