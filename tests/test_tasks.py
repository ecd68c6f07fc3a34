"""The local lm-eval tasks in nirvana/tasks: same prompts/targets/choices/metrics as lm-eval's own tasks,
data resolved at run time from the asset cache (any cwd, NIRVANA_CACHE honoured).

Fast tests use a few synthetic rows per task in a temporary cache; `slow` ones use the built data.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import lm_eval  # a hard dependency: if it breaks, these tests must fail, not skip
import pytest
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from nirvana import paths

TASKS_DIR = paths.tasks_dir()
LM_EVAL_TASKS = Path(lm_eval.__file__).resolve().parent / "tasks"  # resolved: lm-eval resolves the paths it returns

# local task -> (lm-eval's YAML, data file stem, split scored)
TASKS = {
    "local_arc_easy": ("arc/arc_easy.yaml", "arc_easy", "test"),
    "local_arc_challenge": ("arc/arc_challenge.yaml", "arc_challenge", "test"),
    "local_boolq": ("super_glue/boolq/default.yaml", "boolq", "validation"),
    "local_hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag", "validation"),
    "local_lambada_openai_0_2653": ("lambada/lambada_openai.yaml", "lambada_openai", "test"),
    "local_openbookqa": ("openbookqa/openbookqa.yaml", "openbookqa", "test"),
    "local_piqa": ("piqa/piqa.yaml", "piqa", "validation"),
    # lm-eval scores SciQ's test split; the offline source has only validation (documented in the YAML).
    "local_sciq": ("sciq/sciq.yaml", "sciq", "validation"),
    "local_winogrande": ("winogrande/default.yaml", "winogrande", "validation"),
}
COUNTS = {
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
# Everything that decides what the model sees and how it is scored.
PROMPT_KEYS = (
    "output_type",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "process_docs",
    "metric_list",
    "target_delimiter",
    "fewshot_delimiter",
    "description",
    "process_results",
    "filter_list",
    "generation_kwargs",
    "num_fewshot",
    "should_decontaminate",
    "doc_to_decontamination_query",
    "use_prompt",
    "repeats",
)


def _arc(i: int) -> dict:
    return {
        "id": f"q{i}",
        "question": f"Which number is {i}?",
        "choices": {"text": [str(i), "x", "y", "z"], "label": ["A", "B", "C", "D"]},
        "answerKey": "A",
    }


# Two or more rows per task with the fields of the built JSONL (see tests/test_assets.py::EXPECTED_FIELDS).
SAMPLES = {
    "arc_easy": [_arc(i) for i in range(6)],
    "arc_challenge": [_arc(i) for i in range(2)],
    "openbookqa": [
        {
            "id": "1",
            "question_stem": "The sun is",
            "answerKey": "B",
            "choices": {"text": ["cold", "hot", "wet", "blue"], "label": ["A", "B", "C", "D"]},
        }
    ]
    * 2,
    "lambada_openai": [{"text": "she gave the book to her brother"}, {"text": "he opened the door"}],
    "boolq": [
        {"question": "is water wet", "passage": "Water: it is wet.", "idx": i, "label": i % 2}
        for i in range(2)
    ],
    "hellaswag": [
        {
            "ind": 4,
            "activity_label": "Cooking",
            "ctx_a": "A man  stands [header] in a kitchen.",
            "ctx_b": "he",
            "ctx": "A man stands in a kitchen. he",
            "endings": [" cuts [step] bread.", "b", "c", "d"],
            "source_id": "s",
            "split": "val",
            "split_type": "indomain",
            "label": "0",
        }
    ]
    * 2,
    "piqa": [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}] * 2,
    "sciq": [
        {
            "question": "What is H2O?",
            "distractor1": "salt",
            "distractor2": "air",
            "distractor3": "sand",
            "correct_answer": "water",
            "support": " Water is H2O.",
        }
    ]
    * 2,
    "winogrande": [
        {"sentence": "Ann helped Bo because _ was kind.", "option1": "Ann", "option2": "Bo", "answer": "1"}
    ]
    * 2,
}


@pytest.fixture
def synthetic_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NIRVANA_CACHE", str(tmp_path / "cache"))
    paths.data_dir().mkdir(parents=True)
    for stem, rows in SAMPLES.items():
        with open(paths.data_dir() / f"{stem}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    monkeypatch.chdir(tmp_path)  # any cwd: nothing may depend on it
    return paths.cache_dir()


def _manager() -> TaskManager:
    # include_defaults=False skips indexing lm-eval's ~15K task YAMLs (seconds); ours are standalone.
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


# ------------------------------------------------------------------------------------- fast tests


@pytest.mark.parametrize("task", sorted(TASKS))
def test_yaml_matches_lm_eval(task):
    """Prompt/scoring fields equal lm-eval's own YAML; only the data source differs."""
    ref_yaml, stem, split = TASKS[task]
    ours = load_yaml(TASKS_DIR / f"{task}.yaml", resolve_func=False)
    ref = load_yaml(LM_EVAL_TASKS / ref_yaml, resolve_func=False)
    assert ours["task"] == task
    for key in PROMPT_KEYS:
        a, b = ours.get(key), ref.get(key)
        if isinstance(b, str) and b.startswith(str(LM_EVAL_TASKS)):
            # An lm-eval `!function`: ours must name a helper of the same function name next to our YAML
            # (their behaviour is compared by the helper tests below).
            assert isinstance(a, str) and a.startswith(str(TASKS_DIR)), (key, a)
            assert a.rsplit(".", 1)[1] == b.rsplit(".", 1)[1], key
        else:
            assert a == b, (key, a, b)
    expected = {"nirvana_task": stem, "nirvana_split": split}
    if stem == "lambada_openai":  # items 0–2652 only: the rest is the offline probe and calibration text
        expected["nirvana_items"] = 2653
    assert ours["dataset_kwargs"] == expected
    assert ours["custom_dataset"].endswith("_local_data.load")
    assert (ours.get("test_split") or ours.get("validation_split")) == split
    assert not ours.get("training_split") and not ours.get("fewshot_split")
    if task != "local_sciq":
        assert (ref.get("test_split") or ref.get("validation_split")) == split  # lm-eval scores that split


def test_group_lists_every_local_task():
    group = load_yaml(TASKS_DIR / "local_zeroshot.yaml", resolve_func=False)
    assert group["group"] == "local_zeroshot"
    assert (
        sorted(group["task"])
        == sorted(TASKS)
        == sorted(p.stem for p in TASKS_DIR.glob("local_*.yaml") if p.stem != "local_zeroshot")
    )


def _helper(name: str):
    """Load one of our helper modules by path, as lm-eval does."""
    spec = importlib.util.spec_from_file_location(f"_nirvana_test_{name}", TASKS_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hellaswag_helper_matches_lm_eval():
    import datasets

    ref = importlib.import_module("lm_eval.tasks.hellaswag.utils")
    ours = _helper("hellaswag_utils")
    docs = SAMPLES["hellaswag"] + [
        {
            **SAMPLES["hellaswag"][0],
            "activity_label": "x [title] y",
            "ctx_b": "",
            "endings": ["  a  b  ", "[x]c", "d [title] e", "f"],
            "label": "3",
        }
    ]
    ds = datasets.Dataset.from_list(docs)
    assert ours.process_docs(ds).to_list() == ref.process_docs(ds).to_list()


def test_hellaswag_docs_are_mapped_once_per_dataset():
    """lm-eval asks for the docs five times per evaluation: the same dataset is mapped once, another one anew."""
    import datasets

    ours = _helper("hellaswag_utils")
    first, second = (datasets.Dataset.from_list(SAMPLES["hellaswag"][:n]) for n in (1, 2))
    assert ours.process_docs(first) is ours.process_docs(first)
    assert ours.process_docs(second) is not ours.process_docs(first)
    assert len(ours.process_docs(second)) == 2 and ours.process_docs(second)[0] == ours.process_docs(first)[0]


def test_winogrande_helpers_match_lm_eval():
    ref = importlib.import_module("lm_eval.tasks.winogrande.preprocess_winogrande")
    ours = _helper("winogrande_utils")
    docs = SAMPLES["winogrande"] + [
        {"sentence": "_ left early.", "option1": "A", "option2": "B", "answer": "2"}
    ]
    for doc in docs:
        for fn in ("doc_to_text", "doc_to_target", "doc_to_choice"):
            assert getattr(ours, fn)(doc) == getattr(ref, fn)(doc)


def test_loader_reads_the_cache_at_run_time(synthetic_cache):
    load = _helper("_local_data").load
    dd = load(nirvana_task="piqa", nirvana_split="validation", version=1.0, pretrained="ignored")
    assert list(dd) == ["validation"] and dd["validation"].to_list() == SAMPLES["piqa"]
    with pytest.raises(FileNotFoundError, match="nirvana.assets"):
        load(nirvana_task="nope", nirvana_split="test")


def test_local_tasks_load_from_any_cwd(synthetic_cache):
    loaded = _manager().load(sorted(TASKS))["tasks"]
    assert sorted(loaded) == sorted(TASKS)
    for name, task in loaded.items():
        stem = TASKS[name][1]
        docs = list(task.eval_docs)
        assert len(docs) == len(SAMPLES[stem])
        assert set(SAMPLES[stem][0]) <= set(docs[0])
        text = task.doc_to_text(docs[0])
        if task.OUTPUT_TYPE == "multiple_choice":
            choices, target = task.doc_to_choice(docs[0]), task.doc_to_target(docs[0])
            assert len(choices) >= 2
            # winogrande: the "text" is the gold context index, the target the shared continuation
            assert (text if name == "local_winogrande" else target) in range(len(choices))
        else:
            assert isinstance(text, str) and task.doc_to_target(docs[0]).startswith(" ")


def _tiny_lm():
    """A random 2-layer Llama with a byte-level BPE trained on pydoc_data.topics (seconds, offline)."""
    import pydoc_data.topics

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        list(pydoc_data.topics.topics.values()),
        trainers.BpeTrainer(
            vocab_size=512, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval(), tok


def test_tiny_model_end_to_end(synthetic_cache):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    model, tok = _tiny_lm()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=128)
    out = simple_evaluate(
        model=lm,
        tasks=["local_arc_easy", "local_lambada_openai_0_2653"],
        task_manager=_manager(),
        limit=5,
        bootstrap_iters=0,
    )
    assert 0.0 <= out["results"]["local_arc_easy"]["acc,none"] <= 1.0
    assert out["results"]["local_lambada_openai_0_2653"]["perplexity,none"] > 1.0
    assert len(out["samples"]["local_arc_easy"]) == 5


# ------------------------------------------------------------------------------ built data (`slow`)


@pytest.fixture(scope="module")
def built_data():
    missing = [s for s in COUNTS if not (paths.data_dir() / f"{s}.jsonl").is_file()]
    if missing:
        pytest.fail(f"benchmark data missing in {paths.data_dir()} ({missing}); run `make assets` first")


@pytest.fixture(scope="module")
def local_tasks(built_data):
    return _manager().load(sorted(TASKS))["tasks"]


@pytest.mark.slow
def test_local_tasks_on_built_data(local_tasks):
    for name, task in local_tasks.items():
        stem = TASKS[name][1]
        docs = task.eval_docs
        assert len(docs) == (2653 if stem == "lambada_openai" else COUNTS[stem]), name  # LAMBADA: items 0–2652
        assert set(SAMPLES[stem][0]) <= set(docs[0]), name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_requests_as_lm_eval_task(local_tasks, name):
    """lm-eval's own task config, fed the same data, renders exactly our prompts, targets and choices."""
    ref_yaml, stem, split = TASKS[name]
    cfg = load_yaml(LM_EVAL_TASKS / ref_yaml)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    ours = local_tasks[name]
    cfg.update(
        task=f"ref_{name}",
        dataset_path=None,
        dataset_name=None,
        custom_dataset=ours.config.custom_dataset,
        dataset_kwargs=dict(ours.config.dataset_kwargs),
        training_split=None,
        fewshot_split=None,
        validation_split=split if split == "validation" else None,
        test_split=split if split == "test" else None,
    )
    ref = ConfigurableTask(config=cfg)
    ref_docs, our_docs = ref.eval_docs, ours.eval_docs
    assert len(ref_docs) == len(our_docs)
    n = min(len(our_docs), 400)  # plenty to catch a template difference, cheap enough
    for i in range(n):
        a, b = our_docs[i], ref_docs[i]
        assert ours.doc_to_text(a) == ref.doc_to_text(b)
        assert ours.doc_to_target(a) == ref.doc_to_target(b)
        if ours.OUTPUT_TYPE == "multiple_choice":
            assert ours.doc_to_choice(a) == ref.doc_to_choice(b)
    assert [m["metric"] for m in ours.config.metric_list] == [m["metric"] for m in ref.config.metric_list]
