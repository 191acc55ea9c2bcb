# Two commands set everything up (both idempotent):
#   make demo   create .venv, install, generate demo data, run stage 1 + stage 2, evaluate, report
#   make test   create .venv, install, lint (ruff) and type-check (mypy), run the whole test suite
# Another torch build (e.g. CUDA 12.6), installed on its own before the rest, and again whenever TORCH changes:
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# Stage-2 seeds of the demo: one by default (a few minutes); SEEDS=0,1,2 ranks the methods (about 3x the time).
SEEDS ?= 0
STAMP := $(VENV)/.installed
# one stamp per TORCH value: a new value reinstalls torch
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH)' | cksum | cut -d' ' -f1)
PIP := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: install demo lint test clean

$(TORCH_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.torch-*
	$(PY) -m pip uninstall -y -q torch 2>/dev/null || true
	$(PIP) $(TORCH)
	touch $@

$(STAMP): setup.cfg pyproject.toml $(TORCH_STAMP)
	$(PIP) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --workdir runs/demo --seeds $(SEEDS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q tests

clean:
	rm -rf runs/demo demo_data .pytest_cache
