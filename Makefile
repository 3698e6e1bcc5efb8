# The two commands README.md gives: `make demo` and `make test`. Each sets up a local
# virtual environment (.venv) from this repo's own pyproject.toml on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

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
	rm -rf $(VENV) build site *.egg-info
