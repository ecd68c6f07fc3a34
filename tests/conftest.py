import pytest
import torch

import nirvana.bench.config  # noqa: F401 — registers the benchmark's schema (conf/bench.yaml extends bench_schema)
import nirvana.config  # noqa: F401 — registers the config schemas every composed config extends
from nirvana.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(params=TINY_FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def model(family):
    return tiny_model(family)


@pytest.fixture(scope="session")
def calib_ids(tokenizer):
    """8 windows of 32 tokens of real text (pydoc topics), deterministic."""
    from nirvana.tiny import pydoc_text

    ids = tokenizer(pydoc_text()[:200_000], return_tensors="pt").input_ids[0]
    n, t = 8, 32
    starts = torch.arange(n) * (ids.numel() // n)
    return torch.stack([ids[s : s + t] for s in starts.tolist()])


@pytest.fixture(scope="session")
def smollm2():
    """The real offline SmolLM2-135M-Instruct in fp32 (slow tests; built by `make assets`)."""
    from nirvana import paths
    from nirvana.models import load_model

    if not (paths.smollm2_dir() / "config.json").exists():
        pytest.skip("SmolLM2 asset not built: run `make assets`")
    model, _ = load_model("builtin:smollm2-135m-instruct", dtype="float32", device="cpu")
    return model


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2):
    from transformers import AutoTokenizer

    from nirvana import paths

    return AutoTokenizer.from_pretrained(paths.smollm2_dir())


@pytest.fixture(scope="session")
def smollm2_calibration(smollm2_tokenizer):
    """One fixed 32×128 batch: the offline LAMBADA tail, passages joined in 4s, official sampler, seed 12."""
    from nirvana.calibration import build_calibration

    return build_calibration("lambada_tail", smollm2_tokenizer, n_samples=32, seq_len=128, seed=12, join=4)


@pytest.fixture(autouse=True)
def _built_assets_only_for_slow_tests(request, tmp_path_factory, monkeypatch):
    """A test not marked `slow` sees an empty asset cache, so one that reads a built asset fails in every run, not
    only on a fresh clone (`make test-fast` must pass with an empty NIRVANA_CACHE: the README promises it)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("NIRVANA_CACHE", str(tmp_path_factory.mktemp("empty_asset_cache")))
