# Two entry points for a fresh machine: `make dev` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# The functions are the ones appwrite.json declares (their folders).
FUNCTIONS = $(shell $(PYTHON) -c "import json; print(' '.join(f['path'] for f in json.load(open('appwrite.json'))['functions']))")

.PHONY: dev test test-fast soak install vendor lint format typecheck unit bench chromium web report-deps deploy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python requirements/runtime.txt requirements/dev.txt shared/pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/dev.txt
	# The domain package, editable: tools, tests and the local runtime import this one copy.
	$(BIN)/pip install --quiet --no-build-isolation --editable ./shared
	touch $@

install: $(VENV)/.installed

# shared/metering is the only copy anyone edits; each function installs the wheel built from it.
vendor: install
	$(BIN)/python tools/vendor.py

web: install
	$(BIN)/python tools/build_web.py

# The charting library the admin report inlines into its HTML (pinned, from the npm registry).
report-deps:
	npm ci --prefix tools/report --no-audit --no-fund --silent

chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: vendor
	$(BIN)/mypy shared/metering localruntime tools
	@for folder in $(FUNCTIONS); do \
		(cd $$folder && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/.mypy_cache src/main.py) || exit 1; \
	done

# pytest exits 5 when it collects nothing: that is not a failure of the code.
test: vendor web report-deps chromium lint typecheck
	$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

# The loop to run while editing: everything but the tests marked slow (other processes, fresh
# interpreters, virtualenvs) and the browser. `make test`, which CI runs, still runs them all.
test-fast: vendor report-deps lint typecheck
	$(BIN)/python -m pytest -m "not slow and not browser"; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

# The long form of the soak (tests/functional/test_soak.py): SOAK_SECONDS of users, faults and
# the cron on a local runtime; SOAK_SEED picks another sequence.
SOAK_SECONDS ?= 600
soak: vendor
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest tests/functional/test_soak.py -s

unit: vendor
	$(BIN)/python -m pytest tests/unit

dev: vendor web
	$(BIN)/python -m localruntime --port $(PORT)

# docs/screenshots/: every page state the docs show, taken in Debian's chromium (the browser tests
# check the same states without writing images).
.PHONY: screenshots
screenshots: vendor web chromium
	$(BIN)/python -m tools.screenshots

# Every benchmark's tables, printed and written into docs/benchmarks.md (the prose around them
# stays); BENCH_ARGS: --quick, or the names of some benchmarks.
bench: vendor
	@mkdir -p .bench
	$(BIN)/python -m benchmarks $(BENCH_ARGS) | tee .bench/report.md
	$(BIN)/python -m benchmarks.doc .bench/report.md

# Vendor, validate appwrite.json, check the project, then the Appwrite CLI pinned in
# tools/deploy/package.json pushes tables and functions to APPWRITE_ENDPOINT, APPWRITE_PROJECT_ID
# with APPWRITE_API_KEY (docs/deployment.md). DEPLOY_ARGS: --dry-run, --functions-only, ...
deploy: vendor
	cd tools/deploy && npm ci --no-audit --no-fund --loglevel=error
	PATH="$(CURDIR)/tools/deploy/node_modules/.bin:$$PATH" $(BIN)/python tools/deploy.py $(DEPLOY_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
