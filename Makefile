# Two commands on a fresh machine:  `make demo`  and  `make test`.
# The environment (PyTorch with its CUDA libraries is ~5 GB) is made once, outside
# the clone, and reused by every clone and CI run; set VENV to put it elsewhere.
VENV ?= $(HOME)/.venvs/ecgtrace
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env demo test test-all bench
env:
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "[make] installing ecgtrace into $(VENV) (first time: several GB, later: seconds)"
	@$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"

demo: env
	$(VENV)/bin/ecgtrace demo

test: env
	$(VENV)/bin/ruff check src tests bench *.py
	PYTHONPATH=src $(PY) -m pytest $(PYTEST_ARGS)

test-all: env
	PYTHONPATH=src $(PY) -m pytest -m "" $(PYTEST_ARGS)
