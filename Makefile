# One venv, created once; every target that runs code depends on it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo bench lint clean

setup: $(STAMP)

# Re-install only when the dependency lists change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q --durations=12

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration"

demo: setup
	$(BIN)/medray demo

bench: setup
	$(BIN)/python benchmarks/dataset_read.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
