# The two commands of the README, and the tools around them.
# Each target creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080

.PHONY: demo test test-servers lint typecheck bench loadtest clean

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

# The benchmarks (a few minutes; need wrk: apt-get install wrk). Each prints
# ratios against a baseline measured in the same run.
bench: $(VENV)/.test-deps
	$(BIN)/python -m loadtests.bench_redirect
	$(BIN)/python -m loadtests.bench_redirect --decision-cache-size 0
	$(BIN)/python -m loadtests.bench_fleet
	$(BIN)/python -m loadtests.bench_signing
	$(BIN)/python -m loadtests.bench_memory
	$(BIN)/python -m loadtests.bench_stream --size-mib 256 --rounds 2

# A fleet load test (Locust) against the demo.
LOADTEST_DIR ?= .demo
USERS ?= 50
SPAWN_RATE ?= 10
RUN_TIME ?= 60s

loadtest: $(VENV)/.test-deps
	@$(BIN)/gateway demo --port $(PORT) --dir $(LOADTEST_DIR) > $(LOADTEST_DIR).log 2>&1 & demo=$$!; \
	trap 'kill -INT $$demo; wait $$demo' EXIT; \
	for i in $$(seq 150); do curl -fs http://127.0.0.1:$(PORT)/readyz >/dev/null && break; sleep 0.2; done; \
	$(BIN)/locust -f loadtests/locustfile.py --headless -u $(USERS) -r $(SPAWN_RATE) -t $(RUN_TIME) \
	    --host http://127.0.0.1:$(PORT) --demo-dir $(LOADTEST_DIR) --only-summary

clean:
	rm -rf $(VENV) build *.egg-info .demo .demo.log
