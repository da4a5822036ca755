# The two commands: `make up` and `make test`. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install up test test-fast bench lint migrate demo clean

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

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.reviews

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check aftercare flows tasks tests bench

clean:
	rm -rf var/ .pytest_cache
