.DEFAULT_GOAL := check

VENV ?= .venv
PY = $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
STAMP = $(VENV)/.installed

# Only lint directories that exist (examples/ and benchmarks/ may come later).
LINT_DIRS := $(wildcard redisflow tests examples benchmarks)

.PHONY: venv test chaos lint typecheck check demo bench-smoke bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)

test: venv
	$(PY) -m pytest -m "not chaos"

chaos: venv
	$(PY) -m pytest -m chaos

lint: venv
	$(PY) -m ruff check $(LINT_DIRS)
	$(PY) -m ruff format --check $(LINT_DIRS)

typecheck: venv
	$(PY) -m mypy

check: lint typecheck test

demo: venv
	$(PY) examples/demo.py

bench-smoke: venv
	$(PY) benchmarks/queue_drain.py --n 20000

bench: venv
	$(PY) benchmarks/queue_drain.py

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
