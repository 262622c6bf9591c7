# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test contract lint format bench soak dev clean spec-diff

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install  ## materialize all 20 tables from the bundled Klaviyo simulator into demo.duckdb
	$(BIN)/python -m omniload_assets_tests.demo

test: install  ## the whole test suite, lint included
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

contract: install  ## requests, responses and columns against Klaviyo's OpenAPI document (../shared/klaviyo)
	$(BIN)/pytest -q -m contract omniload_assets_tests/contract

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

INGESTR_VENV := .bench/ingestr-venv

$(INGESTR_VENV)/bin/ingestr:  # a throw-away venv: ingestr is no dependency of the product
	$(PYTHON) -m venv $(INGESTR_VENV)
	$(INGESTR_VENV)/bin/pip install --quiet --upgrade pip
	$(INGESTR_VENV)/bin/pip install --quiet 'ingestr>=0.14,<0.15'

bench: install $(INGESTR_VENV)/bin/ingestr  ## the commands users run vs ingestr 0.14, then throughput, memory, merge speed (~7 min)
	DISABLE_TELEMETRY=1 $(BIN)/python -m omniload_assets_tests.bench --ingestr-python $(INGESTR_VENV)/bin/python

soak: install  ## a few minutes of syncs under faults and changing data; DuckDB must match every round
	$(BIN)/python -m omniload_assets_tests.soak --minutes $(or $(SOAK_MINUTES),3)

DAGSTER_HOME_DIR := $(CURDIR)/.dagster_home

dev: install  ## the Dagster UI on http://127.0.0.1:3000, pools limited to 1 per endpoint (set KLAVIYO_API_KEY first)
	mkdir -p $(DAGSTER_HOME_DIR)
	cp omniload_assets/dagster.yaml $(DAGSTER_HOME_DIR)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(BIN)/dagster dev -w workspace.yaml

spec-diff: install  ## what a newer Klaviyo OpenAPI document changes for the 15 tables: make spec-diff SPEC=new.json
	@test -n "$(SPEC)" || { echo "usage: make spec-diff SPEC=path/to/openapi.json"; exit 2; }
	$(BIN)/python -m omniload_assets_tests.contract_tools.spec_diff $(SPEC)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
