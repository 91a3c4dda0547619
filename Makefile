# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Each creates the virtual environment, installs cmpnas with every package pinned (constraints.txt)
# and the data, then runs. PIP_ARGS: extra pip options (.ci/run adds --no-cache-dir).
# --no-compile: pip byte-compiles every module it installs (torch, ray, mlflow, ... : tens of thousands
# of files, about 45% of the install's CPU time); without it Python compiles only the modules a run
# imports, once, on first import (docs/benchmarks.md, "The first ten minutes"). Not where
# PYTHONDONTWRITEBYTECODE is set: there Python never keeps what it compiles, and every process would
# compile its imports again.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cmpnas-installed
FASHION_DIR := /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=
PIP_ARGS ?=
PIP_COMPILE := $(if $(PYTHONDONTWRITEBYTECODE),,--no-compile)

.PHONY: demo test install data clean gpu-carry gpu-carry-check

demo: install data
	$(BIN)/cmpnas search

test: install data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off $(PIP_COMPILE) $(PIP_ARGS) -c constraints.txt -e '.[cpu,dev,faces,serve]'
	touch $(STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist when missing and we may install packages.
data:
	@if [ -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is not in $(FASHION_DIR): install Debian's dataset-fashion-mnist," \
	       "or run with --set data.download=true on a machine with internet"; \
	fi

# The wheels and data that travel to the lent GPU machine, and the check that they are complete
# (docs/deploy.md, "The lent GPU machine"); bench/gpu/carry/ is git-ignored.
gpu-carry: install data
	$(BIN)/python bench/gpu/build_carry.py

gpu-carry-check: install
	$(BIN)/python bench/gpu/build_carry.py --check

clean:
	rm -rf $(VENV) outputs mlflow.db mlruns mlartifacts .pytest_cache
