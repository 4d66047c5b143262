# Developer entry points. `make study` and `make test` are the README's quick start.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs

.PHONY: setup study test test-slow test-all lint typecheck docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of PyTorch first, so that the range in pyproject.toml is already met.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: a constrained-training study with its report and figures under $(OUT)/
# (--overwrite: a rerun replaces the previous study's files).
study: $(STAMP)
	$(BIN)/constrain compare fairness-adult --controllers gda,nupi --out $(OUT)/fairness-adult --overwrite
	$(BIN)/constrain compare iris-svm --controllers gda,momentum,adam,nupi --out $(OUT)/iris-svm --overwrite

# The default (fast) test suite; pytest's exit code 5 (no tests collected) is an error here.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m "not slow"

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m slow

test-all: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check src problems tests benchmarks examples
	$(BIN)/ruff format --check src

typecheck: $(STAMP)
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(OUT) site docs/_build .pytest_cache .mypy_cache .ruff_cache
