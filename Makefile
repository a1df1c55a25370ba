# make demo  -- create .venv and run the whole pipeline on embedded defaults (~5 min on 2 cores)
# make test  -- create .venv and run the whole test suite (what .ci/run calls)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: venv demo test clean

# pip byte-compiles the wheels on one core (140 of the 290 s of a fresh venv here); compileall
# does it on all of them (60 s on 2 cores). Not compiling at all is slower: with
# PYTHONDONTWRITEBYTECODE set (as in this workplace's shells) every process, Ray's workers
# included, would compile torch, Ray and MLflow again on import (+10 s each). "|| true": a few
# files are written for newer Pythons (torch's py312 test helpers); pip skips them the same way.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-compile -e ".[ingest,dev]" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib/python*/site-packages > /dev/null || true
	$(BIN)/python -c "import torch, ray, mlflow, mediapipe, pyarrow; print('env ok: torch', torch.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__)"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline.demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf runs .pytest_cache
