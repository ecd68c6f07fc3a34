# NIRVANA reproduction — every target does the set-up it needs, so each works alone on a fresh clone.
# `make help` lists the targets.

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# The CPU wheel by default. CUDA users: make setup TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>"
TORCH_SPEC  ?= torch==2.13.0
# Where `make assets` puts model weights and benchmark data (git-ignored; override to share a cache).
export NIRVANA_CACHE ?= $(CURDIR)/.cache/nirvana
PYTEST_ARGS ?=
# test, test-fast: pytest-xdist workers, one torch thread each, one test file per worker at a time (module fixtures
# are built once) — the suite is mostly small ops and imports that use about one core, so on 2 cores two
# single-threaded workers take 0.59x the time of one process: whole suite 485 s vs 828 s, fast suite 251 s vs 429 s.
# TEST_WORKERS=0 runs one process.
TEST_WORKERS ?= 2
PYTEST_XDIST = -n $(TEST_WORKERS) --dist loadfile
# assets: opt-in models to build as well (space-separated asset names: qwen2.5_coder_0.5b)
MODELS   ?=
# reproduce-table2: the model config (conf/model/*.yaml) and the Hydra launcher (basic | joblib | submitit_slurm)
MODEL    ?= llama3.1_8b
LAUNCHER ?= basic
ARGS     ?=
# notebooks: where the result rows (and optionally plans) are
RESULTS  ?= results
PLANS    ?=
# sweep-status: a sweep's name (conf/experiment/<name>.yaml)
EXPERIMENT ?= demo
# The offline models have no hub: the same sweep on offline text and tasks (Qwen: its own block, conf/experiment)
TABLE2_EXPERIMENT = $(if $(filter smollm2_135m,$(MODEL)),table2_offline,$(if $(filter qwen2.5_coder_0.5b,$(MODEL)),table2_offline_qwen,table2))
OFFLINE_TABLE2    = $(filter table2_offline%,$(TABLE2_EXPERIMENT))
# reproduce-beyond: SmolLM2 unless MODEL names the opt-in Qwen model (its own, shorter sweep: conf/experiment/beyond_qwen.yaml)
BEYOND_OPT_IN = $(filter qwen2.5_coder_0.5b,$(MODEL))
BEYOND_MODEL  = $(or $(BEYOND_OPT_IN),smollm2_135m)
BEYOND_SWEEP  = beyond$(if $(BEYOND_OPT_IN),_qwen)

# llama.cpp (opt-in, docs/deploy.md): llama-cpp-python built from its source distribution with the system compiler
# (CPU), never a prebuilt wheel (those may need a newer glibc); without the multimodal library (LLAVA_BUILD=OFF:
# nothing here uses it). 14 min on 2 cores, one of them busy with other work.
LLAMACPP_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
LLAMACPP_STAMP := $(VENV)/.llamacpp-done

SETUP_STAMP  := $(VENV)/.setup-done
ASSETS_STAMP := $(NIRVANA_CACHE)/.assets-done

.DEFAULT_GOAL := help
.PHONY: help setup setup-llamacpp assets test test-fast test-llamacpp demo reproduce-table2 reproduce-draws report-draws reproduce-search report-search reproduce-beyond reproduce-quant reproduce-gguf reproduce-gguf-round reproduce-recovery sweep-status report-demo notebooks bench gpu-check lint clean-assets

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-20s %s\n", $$1, $$2}'

$(SETUP_STAMP): pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing below can pull another build of it
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev]"
	touch $@

setup: $(SETUP_STAMP) ## create .venv with torch ($(TORCH_SPEC)) and the package in editable mode

$(LLAMACPP_STAMP): $(SETUP_STAMP)
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-$$(nproc)} \
		$(PY) -m pip install --no-binary llama-cpp-python -e ".[llamacpp]"
	touch $@

setup-llamacpp: $(LLAMACPP_STAMP) ## opt-in: build llama-cpp-python 0.3.36 (llama.cpp + its OpenAI server) from source into .venv (~14 min on 2 cores)

$(ASSETS_STAMP): $(SETUP_STAMP) nirvana/assets/*.py
	$(PY) -m nirvana.assets build
	@mkdir -p $(dir $@) && touch $@

assets: $(ASSETS_STAMP) ## build the offline SmolLM2 model, benchmark data and text sets into $NIRVANA_CACHE; MODELS=qwen2.5_coder_0.5b adds that model (2.5 GB)
	$(if $(MODELS),$(PY) -m nirvana.assets build --only $(MODELS))

# The llama.cpp tests (marker `llamacpp`) run in test-llamacpp only, so test and test-fast take the same time whether
# or not the extra is installed (pytest lists them as deselected).
test: $(ASSETS_STAMP) ## set up, build assets, run the whole test suite but GPU and llama.cpp tests
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m "not gpu and not llamacpp" $(PYTEST_XDIST) $(PYTEST_ARGS)

test-fast: $(SETUP_STAMP) ## tests that need no built asset (no `slow`, no `gpu`, no `llamacpp`)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m "not gpu and not slow and not llamacpp" $(PYTEST_XDIST) $(PYTEST_ARGS)

test-llamacpp: $(ASSETS_STAMP) $(LLAMACPP_STAMP) ## build the llama.cpp extra if needed, run the tests marked llamacpp: logit parity, quantization, perplexity, bench, server
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m "llamacpp and not gpu" $(PYTEST_ARGS)

demo: $(ASSETS_STAMP) ## the main job on the offline default: prune SmolLM2 with NIRVANA + baselines, evaluate, tabulate
	$(PY) -m experiments.run -m experiment=demo $(ARGS)
	$(MAKE) --no-print-directory report-demo

report-demo: $(SETUP_STAMP) ## rebuild results/demo tables and figures from its rows
	$(PY) -m experiments.report --rows results/demo/rows.jsonl --out results/demo \
		--plans $$(ls -t outputs/demo/*/*/pruning_plan.json 2>/dev/null | grep -v /dense | head -20)

# Offline models build their assets first: the preflight (typos, requirements, data overlap) reads the built data.
reproduce-table2: $(SETUP_STAMP) ## Table 2 sweep (GPU + hub); MODEL=smollm2_135m | qwen2.5_coder_0.5b runs it offline; LAUNCHER=joblib|submitit_slurm
	$(if $(OFFLINE_TABLE2),$(MAKE) --no-print-directory assets $(if $(filter qwen2.5_coder_0.5b,$(MODEL)),MODELS=$(MODEL)))
	$(PY) -m experiments.run experiment=$(TABLE2_EXPERIMENT) model=$(MODEL) job.preflight=true $(ARGS)
	$(PY) -m experiments.run -m experiment=$(TABLE2_EXPERIMENT) model=$(MODEL) hydra/launcher=$(LAUNCHER) $(ARGS)
	$(if $(filter table2_offline,$(TABLE2_EXPERIMENT)),$(PY) -m experiments.run -m experiment=table2_offline_ppl \
		model=$(MODEL) hydra/launcher=$(LAUNCHER) $(ARGS))
	$(PY) -m experiments.report --rows results/rows/table2_$(MODEL).jsonl --out results/tables/$(MODEL) \
		--model $(MODEL) --paper results/paper/table2.csv --command "make reproduce-table2 MODEL=$(MODEL)" \
		--plans $$(ls -t outputs/table2/$(MODEL)/*/*/pruning_plan.json 2>/dev/null | head -20)

# reproduce-draws: SmolLM2 unless MODEL names the opt-in Qwen model (perplexity only there: conf/experiment/draws_qwen.yaml)
DRAWS_OPT_IN = $(filter qwen2.5_coder_0.5b,$(MODEL))
DRAWS_SWEEP  = draws$(if $(DRAWS_OPT_IN),_qwen)
DRAWS_MODEL  = $(or $(DRAWS_OPT_IN),smollm2_135m)
# the headline family (docs/protocol.md, Verdicts): the sweep's baselines against NIRVANA, at its metrics
DRAWS_FAMILY = $(if $(DRAWS_OPT_IN),flap --columns lambada_head@512 wiki_passages@512,flap taylor wanda_sp:matched)

reproduce-draws: $(SETUP_STAMP) ## Table 2 over five calibration draws (offline SmolLM2; MODEL=qwen2.5_coder_0.5b: Qwen, perplexity only); seed 12 is Table 2's own runs → results/tables/<model>_draws
	$(MAKE) --no-print-directory assets $(addprefix MODELS=,$(DRAWS_OPT_IN))
	$(PY) -m experiments.run -m experiment=$(DRAWS_SWEEP) hydra/launcher=$(LAUNCHER) $(ARGS)
	$(MAKE) --no-print-directory report-draws MODEL=$(DRAWS_MODEL)

report-draws: $(SETUP_STAMP) ## the draw-aware report from the rows there are (Table 2's, the draws sweep's, nirvana:kl's) → results/tables/<model>_draws
	$(PY) -m experiments.report --draws --rows results/rows/table2_$(DRAWS_MODEL).jsonl \
		results/rows/draws_$(DRAWS_MODEL).jsonl results/rows/beyond_$(DRAWS_MODEL).jsonl \
		--out results/tables/$(DRAWS_MODEL)_draws --model $(DRAWS_MODEL) --family $(DRAWS_FAMILY) --also nirvana:kl \
		--command "make reproduce-draws$(if $(DRAWS_OPT_IN), MODEL=$(DRAWS_OPT_IN))"

# reproduce-search: SmolLM2 unless MODEL names the opt-in Qwen model (20/40 % there: conf/experiment/search_qwen.yaml)
SEARCH_OPT_IN = $(filter qwen2.5_coder_0.5b,$(MODEL))
SEARCH_MODEL  = $(or $(SEARCH_OPT_IN),smollm2_135m)
SEARCH_SWEEP  = search$(if $(SEARCH_OPT_IN),_qwen)

reproduce-search: $(SETUP_STAMP) ## searched per-layer allocation (beyond the paper, offline SmolLM2; MODEL=qwen2.5_coder_0.5b: Qwen): nirvana:search and flap:search vs NIRVANA's global threshold and FLAP → results/tables/search*
	$(MAKE) --no-print-directory assets $(addprefix MODELS=,$(SEARCH_OPT_IN))
	$(PY) -m experiments.run -m experiment=$(SEARCH_SWEEP) hydra/launcher=$(LAUNCHER) $(ARGS)
	$(MAKE) --no-print-directory report-search MODEL=$(SEARCH_MODEL)

report-search: $(SETUP_STAMP) ## the searched-allocation report from the rows there are (Table 2's and the search sweep's) → results/tables/search*
	$(PY) -m experiments.report --rows results/rows/table2_$(SEARCH_MODEL).jsonl results/rows/search_$(SEARCH_MODEL).jsonl \
		--out results/tables/search$(addprefix _,$(SEARCH_OPT_IN)) --model $(SEARCH_MODEL) \
		--command "make reproduce-search$(if $(SEARCH_OPT_IN), MODEL=$(SEARCH_OPT_IN))" \
		--reference nirvana:search nirvana flap flap:search --skip-absent \
		--plans $$(ls -t outputs/search/$(SEARCH_MODEL)/*/*/pruning_plan.json 2>/dev/null | head -20)

reproduce-beyond: $(SETUP_STAMP) ## beyond the paper (offline SmolLM2; MODEL=qwen2.5_coder_0.5b: Qwen): KL-chosen calibration and γ, ablations, baselines with KL calibration → results/tables/beyond*
	$(MAKE) --no-print-directory assets $(addprefix MODELS=,$(BEYOND_OPT_IN))
	$(PY) -m experiments.run -m experiment=$(BEYOND_SWEEP) hydra/launcher=$(LAUNCHER) $(ARGS)
	$(PY) -m experiments.report --rows results/rows/table2_$(BEYOND_MODEL).jsonl results/rows/beyond_$(BEYOND_MODEL).jsonl \
		--out results/tables/beyond$(addprefix _,$(BEYOND_OPT_IN)) --model $(BEYOND_MODEL) \
		--command "make reproduce-beyond$(if $(BEYOND_OPT_IN), MODEL=$(BEYOND_OPT_IN))" \
		--reference nirvana flap flap:kl nirvana:kl taylor:kl nirvana:bias \
		--plans $$(ls -t outputs/beyond/$(BEYOND_MODEL)/*/*/pruning_plan.json 2>/dev/null | head -20)

reproduce-quant: $(SETUP_STAMP) ## quantization after pruning (offline SmolLM2; torchao schemes × dense/NIRVANA/FLAP) → results/tables/quant
	$(MAKE) --no-print-directory assets
	$(PY) -m experiments.run -m experiment=quant_offline hydra/launcher=$(LAUNCHER) $(ARGS)
	$(PY) -m experiments.report --rows results/rows/table2_smollm2_135m.jsonl results/rows/quant_smollm2_135m.jsonl \
		--out results/tables/quant --model smollm2_135m --command "make reproduce-quant" --reference base nirvana \
		--pruners nirvana flap

reproduce-gguf: $(LLAMACPP_STAMP) ## quality in llama.cpp (offline SmolLM2): dense, NIRVANA, FLAP at 20/40 % as f16, Q8_0, Q4_K_M GGUFs, paired per window with Table 2 → results/tables/gguf
	$(MAKE) --no-print-directory assets
	$(PY) -m experiments.run -m experiment=gguf_offline hydra/launcher=$(LAUNCHER) $(ARGS)
	$(PY) -m experiments.report --rows results/rows/table2_smollm2_135m.jsonl results/rows/gguf_smollm2_135m.jsonl \
		--out results/tables/gguf --model smollm2_135m --command "make reproduce-gguf" --reference base nirvana \
		--pruners nirvana flap

reproduce-gguf-round: $(SETUP_STAMP) ## what GGUF-friendly MLP widths cost (offline SmolLM2): NIRVANA, FLAP with round_to 32/256 at 20/40 % vs Table 2 → results/tables/gguf_round
	$(MAKE) --no-print-directory assets
	$(PY) -m experiments.run -m experiment=gguf_round hydra/launcher=$(LAUNCHER) $(ARGS)
	$(PY) -m experiments.report --rows results/rows/table2_smollm2_135m.jsonl results/rows/gguf_round_smollm2_135m.jsonl \
		--out results/tables/gguf_round --model smollm2_135m --command "make reproduce-gguf-round" --reference nirvana flap \
		--pruners nirvana flap nirvana:round32 flap:round32 nirvana:round256 flap:round256

reproduce-recovery: $(SETUP_STAMP) ## the recovery claim (offline SmolLM2): NIRVANA, FLAP, Taylor at 40 % + the same LoRA budget → results/tables/recovery
	$(MAKE) --no-print-directory assets
	$(PY) -m experiments.run -m experiment=recovery_offline hydra/launcher=$(LAUNCHER) $(ARGS)
	$(PY) -m experiments.report --rows results/rows/table2_smollm2_135m.jsonl results/rows/recovery_smollm2_135m.jsonl \
		--out results/tables/recovery --model smollm2_135m --command "make reproduce-recovery" --reference base nirvana \
		--pruners nirvana flap taylor

# A run id in the results file means the run finished (rows are written in one batch at its end).
sweep-status: SHELL := /bin/bash
sweep-status: $(SETUP_STAMP) ## which runs of a sweep are complete and which a launch would still run, loading no model (EXPERIMENT=beyond | quant_offline | table2_offline | …)
	@out=$$($(PY) -m experiments.run -m experiment=$(EXPERIMENT) job.preflight=true $(ARGS)); status=$$?; \
	printf '%s\n' "$$out" | sed -n 's/.*preflight ok: run //p' \
		| awk -v failed=$$status '!seen[$$1]++ { print; m++; if (/— to run/) n++ } END { \
			if (failed) printf "the sweep stops at an invalid run after these %d (its error is above)\n", m; \
			else printf "%d of %d runs still to run\n", n, m }'; \
	exit $$status

notebooks: $(SETUP_STAMP) ## execute every analysis notebook headless on result rows (RESULTS=dir PLANS='glob') → outputs/notebooks
	$(PY) -m experiments.notebooks --results $(RESULTS) $(if $(PLANS),--plans '$(PLANS)') --out outputs/notebooks

bench: $(ASSETS_STAMP) $(LLAMACPP_STAMP) ## benchmarks side by side (scoring memory/time, statistics pass, KL selection, speed, llama.cpp speed, zero-shot speed and exactness, demo) → results/bench (~95 min on 2 cores + the llama.cpp section)
	$(MAKE) --no-print-directory assets MODELS=qwen2.5_coder_0.5b
	$(PY) -m experiments.bench $(ARGS)

gpu-check: $(SETUP_STAMP) ## the prepared GPU check (Llama-3.1-8B shape, 24 GiB cap) → results/bench/gpu_check.json
	$(PY) -m experiments.gpu_check $(ARGS)

lint: $(SETUP_STAMP) ## ruff
	$(VENV)/bin/ruff check nirvana experiments tests

clean-assets: ## delete the built asset cache
	rm -rf $(NIRVANA_CACHE)
