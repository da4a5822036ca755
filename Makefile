# The two commands: `make up` and `make test`. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install up test test-fast bench faults lint migrate demo clean data chromium

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

up: install
	$(BIN)/aftercare up

migrate: install
	$(BIN)/aftercare migrate

demo: install
	$(BIN)/aftercare demo

# Labelled review sentences for the triage figures (tests/reviews/test_triage_figures.py, bench/triage.py):
# the vaderSentiment 3.3.2 sdist, fetched with pip into var/datasets/ and checked by sha256. Without a
# package index the tests that need it skip with the reason (they fail under CI=true).
data: install
	-$(BIN)/python -m aftercare.reviews.datasets

# The approval page's browser test runs Debian's Chromium (Playwright drives it; its own browser
# downloads are never used). Installed here when missing: root, or sudo without a password.
CHROMIUM ?= /usr/bin/chromium

chromium:
	@test -x $(CHROMIUM) || { \
		SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

# Workers of pytest-xdist, each a session of its own (its own PostgreSQL database, SQLite template
# and Prefect test server); the tests sharing a module-scoped fixture stay on one worker (loadgroup,
# tests/conftest.py). TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2

test: install data chromium
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup

bench: install data
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.reviews
	$(BIN)/python -m bench.triage
	$(BIN)/python -m bench.contact
	$(BIN)/python -m bench.review_requests
	$(BIN)/python -m bench.review_form --db both --seconds 20
	$(BIN)/python -m bench.survey_page --db sqlite --seconds 20
	$(BIN)/python -m bench.survey_page --db postgres --seconds 20
	$(BIN)/python -m bench.unsubscribe --db both --seconds 20

# The fault suite (issue 8): the full run on SQLite, then PostgreSQL (a cluster of its own, the
# production topology: prefect.yaml on a process work pool, two workers). Prints one table per run;
# fails when any check does. `make test` includes the short SQLite run (tests/faults/test_fault_suite.py).
faults: install
	$(BIN)/python -m tests.faults --db sqlite,postgres $(FAULTS_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check aftercare flows tasks tests bench

clean:
	rm -rf var/ .pytest_cache
