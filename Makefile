# Developer entry points. `make test` is what CI runs (via .ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the project metadata changes.
VENV_STAMP := $(VENV)/.sluicegate-installed
# The test extras need system packages (the MariaDB driver builds against libmariadb-dev): they
# are installed by `make test` after system-deps, so `make demo` needs nothing but Python.
TEST_STAMP := $(VENV)/.sluicegate-test-installed

.PHONY: venv venv-test system-deps demo lint test test-fast bench clean

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[fast,service]'
	touch $@

venv-test: $(TEST_STAMP)

$(TEST_STAMP): $(VENV_STAMP)
	$(BIN)/python -m pip install -e '.[test,fast,service]'
	touch $@

# PostgreSQL server binaries (for the test fixtures) and pigz (for the benchmark).
system-deps:
	scripts/install-system-deps.sh

demo: venv
	$(BIN)/sluicegate demo demo --force

lint: venv-test
	$(BIN)/ruff check src tests
	$(BIN)/mypy

test: system-deps venv-test lint
	$(BIN)/pytest -q -p no:cacheprovider

# The unit layer only: no server, no network (SQLite and files), a few minutes.
test-fast: venv-test
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

bench: venv system-deps
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/run.py

clean:
	rm -rf build dist .eggs *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache demo
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f $(VENV_STAMP) $(TEST_STAMP)
