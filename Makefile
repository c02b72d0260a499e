# Two commands on a fresh machine (see README):
#   make demo   - set up .venv, start both owners' services and the dealer, appraise the digits candidates
#   make test   - set up .venv, lint (ruff, mypy) and run the whole test suite
# Every install takes its versions from requirements/lock.txt (`make lock` regenerates it).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements/lock.txt
# Where pip looks for torch first: PyTorch's CPU-only wheels. Plain `torch==2.13.0` from PyPI is a
# multi-GB CUDA build on x86-64 Linux. If this index cannot be reached (a machine that sees only
# PyPI, or that keeps a CPU wheel of its own in pip's find-links) the install falls back to the
# plain requirement. `make TORCH_INDEX_URL=` always uses the plain requirement.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

.PHONY: install demo test lint lock bench bench-wan clean compose-test

$(STAMP): pyproject.toml $(LOCK) requirements/crypten.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) pip
	@# torch first: the only package that may need the CPU index (see TORCH_INDEX_URL above)
	$(BIN)/pip install --quiet -c $(LOCK) $$($(BIN)/python requirements/torch_index.py "$(TORCH_INDEX_URL)") torch
	@# crypten's metadata requires dead/unneeded packages; what it really imports is in pyproject.toml
	$(BIN)/pip install --quiet --no-deps --require-hashes -r requirements/crypten.txt
	$(BIN)/pip install --quiet -c $(LOCK) setuptools wheel
	$(BIN)/pip install --quiet -c $(LOCK) --no-build-isolation -e '.[dev,experiments]'
	$(BIN)/python requirements/torch_index.py --check-installed
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/data-appraisal demo

test: lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# Regenerate the lock from pyproject.toml in a small venv of its own (so that a lock that no longer
# installs can still be remade). Pins that still satisfy pyproject.toml are kept;
# `make lock LOCK_FLAGS=--upgrade` moves everything to the newest releases it allows. torch is
# recorded without its local label (+cpu), so that the index chooses the build.
LOCK_FLAGS ?=
lock:
	test -x .venv-lock/bin/python || $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet -c $(LOCK) pip pip-tools
	.venv-lock/bin/pip-compile --quiet $(LOCK_FLAGS) --extra dev --extra experiments \
	    --all-build-deps --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	    --output-file $(LOCK) pyproject.toml
	sed -i -E 's/^(torch==[^+ ]+)\+[a-z0-9.]+/\1/' $(LOCK)
	@echo "$(LOCK) written; the next make install (or make test) installs it"

# docker-compose.yml for real (a Docker engine and Compose v1 or v2): build the image, bring the
# stack up, check the demo appraisal, take it down (tests/e2e/compose_demo.py). torch comes from a
# local CPU wheel if TORCH_WHEEL or pip's find-links has one, else from PyTorch's CPU index.
compose-test: $(STAMP)
	$(BIN)/python -m tests.e2e.compose_demo

# make bench: plaintext, naive CrypTen and this project on the MNIST-sized case, side by side.
# make bench WAN=direct,0,20,50 adds the WAN table (root: network namespaces; benchmarks/wan.py) and its
# plot; make bench-wan runs the WAN table alone. WAN_RATE is every WAN link's tc tbf rate.
WAN      ?=
WAN_RTTS := direct,0,20,50
WAN_RATE ?= 1gbit
WAN_PLOT ?= docs/performance-wan.svg
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_mpc.py $(if $(WAN),--wan $(WAN) --wan-rate $(WAN_RATE) --plot $(WAN_PLOT))

bench-wan: $(STAMP)
	$(BIN)/python benchmarks/bench_mpc.py --only-wan --wan $(or $(WAN),$(WAN_RTTS)) --wan-rate $(WAN_RATE) --plot $(WAN_PLOT)

clean:
	rm -rf $(VENV) .venv-lock demo-data .pytest_cache .mypy_cache .ruff_cache
