# make demo  -- create .venv and run the whole pipeline on embedded defaults (~10 min on 2 cores)
# make test  -- create .venv and run the whole test suite (what .ci/run calls)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: venv demo test clean

# --no-compile: pip would byte-compile every module of every wheel (torch, ray, the CUDA
# libraries' Python parts), 290 s instead of 150 s for a fresh venv on 2 cores; Python compiles
# only what is imported, once, on first use.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-compile -e ".[ingest,dev]" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(BIN)/python -c "import torch, ray, mlflow, mediapipe, pyarrow; print('env ok: torch', torch.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__)"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline.demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf runs .pytest_cache
