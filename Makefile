# Maille: every target bootstraps what it needs (.venv, Python packages, mosquitto) on a fresh Debian.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.maille-installed
PYTEST_ARGS ?=
# Two workers: most tests wait on brokers, boards and clocks, so both cores stay busy.
WORKERS ?= 2

.PHONY: demo test test-long bench lint setup clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	@tools/bootstrap-python $(PY) $(VENV)
	@touch $(STAMP)

.PHONY: system-deps
system-deps:
	@tools/bootstrap-system

demo: setup
	$(BIN)/maille demo

test: setup
	$(BIN)/pytest -n $(WORKERS) $(PYTEST_ARGS)

test-long: setup
	$(BIN)/pytest -n $(WORKERS) -m "" $(PYTEST_ARGS)

bench: setup
	@for b in bench/*/run.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: setup
	$(BIN)/ruff check fleet provisioning tests bench
	$(BIN)/ruff format --check fleet provisioning tests bench

clean:
	rm -rf $(VENV) .pytest_cache build var
