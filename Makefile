# Two commands for a new user (README): `make demo` and `make test`.
# Both create .venv and install the pinned project into it first (once; again when
# pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# dvc.yaml runs `python -m stages.X`: that python must be the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export RAY_USAGE_STATS_ENABLED := 0
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test test-all bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check --no-cache-dir -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ctxemo demo

test: $(STAMP) chromium
	$(BIN)/pytest -m "not slow"

test-all: $(STAMP) chromium
	$(BIN)/pytest

# The report's browser test (tests/browser.py) opens it in Debian's Chromium: installed when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "make test needs Chromium: apt-get install chromium (as root)" >&2; exit 1; }; }

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf data artifacts reports/plots .ray_results mlruns mlflow.db mlartifacts
