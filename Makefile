# The two commands README.md gives: `make demo` and `make test`. Each sets up a local
# virtual environment (.venv) from this repo's own pyproject.toml on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-newest typecheck-newest lint typecheck bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The newest end of the supported range (README, "Install"): Python 3.13 with the JAX
# stack pinned in constraints/newest.txt (bumped on purpose, so an upstream release never
# turns CI red on its own), in its own .venv-newest. Python 3.13 comes from pyenv
# (`pyenv root`/versions/3.13.*, the newest patch release) or from python3.13 on PATH;
# PYTHON_NEWEST=/path/to/python3.13 overrides both.
NEWEST := .venv-newest
NEWEST_STAMP := $(NEWEST)/.installed
PYTHON_NEWEST ?= $(shell { ls -d "$$(pyenv root 2>/dev/null)"/versions/3.13.*/bin/python 2>/dev/null \
	| sort -V | tail -n 1; command -v python3.13; } 2>/dev/null | head -n 1)

$(NEWEST_STAMP): pyproject.toml constraints/newest.txt
	@if [ -z "$(PYTHON_NEWEST)" ] || ! "$(PYTHON_NEWEST)" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then \
		echo "make test-newest: no Python 3.13 found (looked for \`pyenv root\`/versions/3.13.*/bin/python" >&2; \
		echo "and python3.13 on PATH; PYTHON_NEWEST='$(PYTHON_NEWEST)'). Install it with" >&2; \
		echo "'pyenv install 3.13', or run: make test-newest PYTHON_NEWEST=/path/to/python3.13" >&2; \
		exit 1; \
	fi
	"$(PYTHON_NEWEST)" -m venv $(NEWEST)
	$(NEWEST)/bin/pip install --quiet --upgrade pip
	$(NEWEST)/bin/pip install --quiet -e ".[dev]" -c constraints/newest.txt
	touch $(NEWEST_STAMP)

# The suite on the newest end (lint and pyright run once, on the default end: `make test`).
test-newest: $(NEWEST_STAMP)
	$(NEWEST)/bin/python -m pytest -q -n 2 --dist loadgroup

# pyright on the package and adapters against the newest end's JAX (its stubs change).
typecheck-newest: $(NEWEST_STAMP)
	$(NEWEST)/bin/pyright --pythonpath $(NEWEST)/bin/python --pythonversion 3.13

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# Two workers (pytest-xdist): the suite is CPU-bound and this machine has two cores.
# loadgroup keeps tests that share expensive state on one worker and hands them out
# heaviest first (tests/conftest.py, "scheduling on two workers").
test: lint typecheck
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pyright (pinned in pyproject.toml; its Node runtime is a PyPI wheel): the package, the
# adapters, then the examples and the code of every docs page as a user would write it.
typecheck: $(STAMP)
	$(BIN)/pyright
	$(BIN)/python tests/_pages.py build/typecheck
	$(BIN)/pyright -p build/typecheck

bench: $(STAMP)
	$(BIN)/python -m benchmarks

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) $(NEWEST) build site *.egg-info
