# The two commands of the README, and the tools around them.
# Each target creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080

.PHONY: demo test lint typecheck bench clean

$(BIN)/gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/gateway
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/gateway
	$(BIN)/gateway demo --port $(PORT)

test: $(VENV)/.test-deps
	$(BIN)/ruff check gateway tests loadtests
	$(BIN)/ruff format --check gateway tests loadtests
	$(BIN)/mypy
	$(BIN)/pytest -p no:cacheprovider --cov=gateway --cov-branch --cov-report=term:skip-covered

lint: $(VENV)/.test-deps
	$(BIN)/ruff check gateway tests loadtests
	$(BIN)/ruff format --check gateway tests loadtests

typecheck: $(VENV)/.test-deps
	$(BIN)/mypy

bench: $(VENV)/.test-deps
	$(BIN)/python loadtests/bench_redirect.py

clean:
	rm -rf $(VENV) build *.egg-info
