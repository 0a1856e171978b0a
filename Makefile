# relaybus — every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: dev test lint typecheck unit bench clean

$(STAMP): requirements.txt worker/requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

## dev: everything local on one machine (worker, local queue, local functions host, sandbox Slack, Teams and Direct Line agent)
dev: $(STAMP)
	$(PY) -m devstack dev --directline $(ARGS)

## test: lint, type-check and the whole test suite (what CI runs)
test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest $(ARGS)

## bench: throughput and latency figures beside their references, in one run
bench: $(STAMP)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) .relaybus .mypy_cache .ruff_cache .pytest_cache
