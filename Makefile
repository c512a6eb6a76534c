# The two README commands. Both create and reuse .venv, install what they need, and are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test

# torch==2.13.0 first: it is the CPU wheel on these machines' disk; an unpinned torch (pulled by the
# `extract` extra later) would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,extract]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) benchmarks/cpu_sweep.py

test: $(STAMP)
	$(PY) -m pytest -q
