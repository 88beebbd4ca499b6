# Two entry points for a fresh machine (see README.md): `make demo` and `make test`.
# Both create .venv and install everything into it first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# torch goes in first, from the index pip is set up with (here: its CPU wheel). On a machine
# without a GPU whose index would give the CUDA build (16 more packages, gigabytes), take
# PyTorch's CPU wheels from PyTorch's own index:
#     make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

.PHONY: demo test lint check docs bench dist clean sanitize mutate

# The editable install also compiles the C kernel, so a change to it installs again; the
# kernels of earlier builds go first, or Python could load one of them instead.
$(STAMP): pyproject.toml setup.py src/crossent/torch/_native.c src/crossent/coding/_quantise.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_FROM) "torch==2.13.0"
	rm -f src/crossent/torch/_native*.so src/crossent/coding/_quantise*.so
	$(BIN)/python -m pip install --quiet -e ".[dev,transformers,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/crossent train

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools docs/conf.py docs/_ext
	$(BIN)/ruff format --check src tests benchmarks examples tools docs/conf.py docs/_ext
	$(BIN)/mypy

check: test lint

# The documentation site, in docs/_build/html: Sphinx over docs/*.md and the docstrings, every
# ```python block of a page run as it is built; any warning fails it (-W), and it fetches
# nothing (-E: every page read again, so that a changed docstring is never missed). Then every
# code block of README.md and docs/ runs as written (the slow part of test_doc_examples.py).
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -E -q -b html docs docs/_build/html
	$(BIN)/python -m pytest -q -m slow tests/test_doc_examples.py

# The C kernel under AddressSanitizer and UndefinedBehaviorSanitizer, and its exp polynomial
# derived again; both exit non-zero on a finding.
sanitize: $(STAMP)
	$(BIN)/python tools/exp_polynomial.py
	$(BIN)/python tools/sanitize.py

# Mutation testing of the core, a module at a time (tools/mutate.py; docs/testing.md has the
# scores and how long it takes: hours on two cores, so not part of `make test`)
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_measures.py

# What a release uploads, in dist/: the sdist and this platform's abi3 wheel, made manylinux
# on Linux (`cibuildwheel`, configured in pyproject.toml, builds the other platforms' wheels).
# The build fails rather than leave the compiled kernel out.
dist: $(STAMP)
	rm -rf dist
	CROSSENT_REQUIRE_KERNEL=1 $(BIN)/python -m build --outdir dist/built
	$(BIN)/abi3audit --strict --summary dist/built/*.whl
	if [ "$$(uname)" = Linux ]; then \
		PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/auditwheel repair --wheel-dir dist dist/built/*.whl; \
	else cp dist/built/*.whl dist/; fi
	mv dist/built/*.tar.gz dist/ && rm -rf dist/built
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist docs/_build
	rm -f src/crossent/torch/_native*.so src/crossent/coding/_quantise*.so
