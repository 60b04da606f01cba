# The two commands of the README, and the tools around them.
# Each target creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080

.PHONY: demo test test-servers lint typecheck bench clean

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
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory test-servers; \
	else echo "npm not found: the s3rver and Azurite tests will be skipped"; fi
	$(BIN)/ruff check gateway tests loadtests
	$(BIN)/ruff format --check gateway tests loadtests
	$(BIN)/mypy
	$(BIN)/pytest -p no:cacheprovider --cov=gateway --cov-branch --cov-report=term:skip-covered

# The real storage servers the tests run (npm packages, pinned in package.json).
test-servers: tests/servers/node_modules/.installed

tests/servers/node_modules/.installed: tests/servers/package.json tests/servers/package-lock.json
	cd tests/servers && npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(VENV)/.test-deps
	$(BIN)/ruff check gateway tests loadtests
	$(BIN)/ruff format --check gateway tests loadtests

typecheck: $(VENV)/.test-deps
	$(BIN)/mypy

bench: $(VENV)/.test-deps
	$(BIN)/python loadtests/bench_redirect.py

clean:
	rm -rf $(VENV) build *.egg-info
