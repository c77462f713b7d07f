# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/wjp dev

test: $(STAMP)
	$(BIN)/ruff check ledger actors service tests
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ledger actors service tests bench

clean:
	rm -rf $(VENV) var .pytest_cache
