# Two commands on a fresh machine (see README):
#   make demo   - set up .venv, start both owners' services and the dealer, appraise the digits candidates
#   make test   - set up .venv, lint (ruff, mypy) and run the whole test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: any other torch requirement pulls a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	# crypten's metadata requires dead/unneeded packages; its real imports are in pyproject.toml
	$(BIN)/pip install --quiet --no-deps crypten==0.4.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/data-appraisal demo

test: lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_mpc.py

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache
