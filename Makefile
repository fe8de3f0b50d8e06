PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test run lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks scripts data
	$(BIN)/python -m pytest

run: $(VENV)/.installed
	$(BIN)/python -m taskembed.demo

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks scripts data

clean:
	rm -rf $(VENV)
