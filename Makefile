# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint format bench dev clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install  ## materialize all 15 tables from the bundled Klaviyo simulator into demo.duckdb
	$(BIN)/python -m omniload_assets_tests.demo

test: install  ## the whole test suite, lint included
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

dev: install  ## the Dagster UI on http://127.0.0.1:3000 (set KLAVIYO_API_KEY first)
	$(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
