# Two entry points for a fresh machine (see README.md): `make demo` and `make test`.
# Both create .venv and install everything into it first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint check bench clean sanitize

# The CPU build of torch goes in first: a bare `torch` requirement would pull CUDA wheels.
# The editable install also compiles the C kernel, so a change to it installs again.
$(STAMP): pyproject.toml setup.py src/crossent/torch/_native.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,transformers]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/crossent train

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools
	$(BIN)/mypy

check: test lint

# The C kernel under AddressSanitizer and UndefinedBehaviorSanitizer, and its exp polynomial
# derived again; both exit non-zero on a finding.
sanitize: $(STAMP)
	$(BIN)/python tools/exp_polynomial.py
	$(BIN)/python tools/sanitize.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_measures.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
