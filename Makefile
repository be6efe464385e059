# sbridge: setup, demo, tests. Everything runs inside .venv, made with venv + pip.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: install demo test lint bench bench-peers clean

install: $(STAMP)

# torch is installed on its own first, pinned, so that pip never resolves a multi-GB CUDA build as a dependency.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/sbridge demo

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	$(PY) benchmarks/bench_sgm.py

# Peers for the benchmarks only (not dependencies of sbridge): torchcfm without its dependencies, whose pins would
# replace the torch build; the module the benchmarks use needs only torch, numpy and POT.
bench-peers: install
	$(PY) -m pip install --no-deps "torchcfm==1.0.7"

clean:
	rm -rf $(VENV) runs .pytest_cache
