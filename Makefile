# The two commands of the README. Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean-venv

# setup.py compiles libs/metergate/wire/fastwire.py (types in fastwire.pxd): a change to either rebuilds
$(STAMP): pyproject.toml setup.py libs/metergate/wire/fastwire.py libs/metergate/wire/fastwire.pxd
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

## Run the demo of the main job on the embedded broker + PostgreSQL.
demo: $(STAMP)
	$(BIN)/metergate demo

## Run the whole test suite (unit, integration, e2e) against real services.
test: $(STAMP)
	$(BIN)/ruff check libs services tests ops setup.py
	$(BIN)/ruff format --check libs services tests ops setup.py
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check libs services tests ops setup.py
	$(BIN)/ruff format --check libs services tests ops setup.py
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m ops.bench

clean-venv:
	rm -rf $(VENV)
