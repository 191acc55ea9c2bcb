# Two commands set everything up (both idempotent):
#   make demo   create .venv, install, generate demo data, run stage 1 + stage 2, evaluate, report
#   make test   create .venv, install, lint (ruff) and type-check (mypy), run the whole test suite
# Use another torch build (e.g. CUDA) with:  make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# Stage-2 seeds of the demo: one by default (a few minutes); SEEDS=0,1,2 ranks the methods (about 3x the time).
SEEDS ?= 0
STAMP := $(VENV)/.installed

.PHONY: install demo lint test clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q $(TORCH) -e ".[test]"
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
