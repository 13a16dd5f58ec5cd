# One venv, created once; every target that runs code depends on it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser mlflow-server test test-fast demo bench lint clean

setup: $(STAMP)

# Re-install only when the dependency lists change. pip's own output (build warnings,
# index notes) goes to a log, shown only if the install fails.
$(STAMP): pyproject.toml constraints.txt
	@echo "setting up $(VENV) (first run only; pip's log: $(VENV)/install.log)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip > $(VENV)/install.log 2>&1 && \
	  $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' >> $(VENV)/install.log 2>&1 || \
	  { tail -n 40 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

# The web page's tests drive Debian's Chromium and ChromeDriver (tests/support/browser.py).
# Under CI (CI=true) `make test` installs them first, as root; elsewhere `make browser`
# does, and without them those tests are skipped with the reason (-rs prints it).
BROWSER_PACKAGES := chromium chromium-driver
browser: setup
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing $(BROWSER_PACKAGES) for the web page's tests (apt's log: $(VENV)/browser.log)"; \
	  { apt-get install -y --no-install-recommends $(BROWSER_PACKAGES) || \
	    { apt-get update && apt-get install -y --no-install-recommends $(BROWSER_PACKAGES); }; } \
	    > $(VENV)/browser.log 2>&1 || { tail -n 20 $(VENV)/browser.log; exit 1; }; }

# The tracking tests run a real MLflow server from a venv of its own (the full `mlflow`
# needs pyarrow<26; the project pins 26 and has the client alone); without it they are
# skipped with the reason, and fail under CI=true. --no-compile: compiling all of mlflow's
# and its dependencies' modules took a third of the install; the server compiles the few it imports.
MLFLOW_SERVER := .mlflow-server
mlflow-server: $(MLFLOW_SERVER)/.installed

$(MLFLOW_SERVER)/.installed: constraints-mlflow-server.txt
	@echo "setting up $(MLFLOW_SERVER) for the tracking tests (pip's log: $(MLFLOW_SERVER)/install.log)"
	@test -x $(MLFLOW_SERVER)/bin/python || $(PYTHON) -m venv $(MLFLOW_SERVER) || python3 -m venv $(MLFLOW_SERVER)
	@$(MLFLOW_SERVER)/bin/python -m pip install --quiet --no-compile -c constraints-mlflow-server.txt mlflow \
	  > $(MLFLOW_SERVER)/install.log 2>&1 || { tail -n 40 $(MLFLOW_SERVER)/install.log; exit 1; }
	@touch $@

test: setup mlflow-server $(if $(filter true,$(CI)),browser)
	$(BIN)/python -m pytest -q -rs --durations=12

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration"

demo: setup
	$(BIN)/medray demo

bench: setup
	$(BIN)/python benchmarks/dataset_read.py

clean:
	rm -rf $(VENV) $(MLFLOW_SERVER) .pytest_cache build *.egg-info
