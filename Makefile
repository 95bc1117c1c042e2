.DEFAULT_GOAL := check

VENV ?= .venv
PY = $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
STAMP = $(VENV)/.installed

# Only lint directories that exist (examples/ and benchmarks/ may come later).
LINT_DIRS := $(wildcard redisflow tests examples benchmarks)

.PHONY: venv test chaos lint typecheck check demo screenshots bench-smoke bench dist clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)

# Four pytest workers, each with its own private redis-server: the tests mostly wait (on
# Redis, timeouts, subprocesses), so this roughly halves the wall time even on 2 cores.
test: venv
	$(PY) -m pytest -m "not chaos" -n 4

# Fault-injection tests (kill -9, Redis restarts, floods); figures printed at the end.
# `make chaos FIGURES=docs/chaos-figures.json` also writes them as JSON.
chaos: venv
	$(PY) -m pytest -m chaos $(if $(FIGURES),--figures=$(FIGURES))

lint: venv
	$(PY) -m ruff check $(LINT_DIRS)
	$(PY) -m ruff format --check $(LINT_DIRS)

typecheck: venv
	$(PY) -m mypy

check: lint typecheck test

demo: venv
	$(PY) examples/demo.py

# The dashboard screenshots the README shows (docs/img/): the browser test, with the shop
# running a minute first so the charts have a history. Needs chromium (Debian package).
screenshots: venv
	REDISFLOW_SCREENSHOTS=docs/img $(PY) -m pytest tests/test_browser.py -p no:xdist -q

# redisflow only, small N, one run each, no files written: keeps the suite from rotting (CI).
bench-smoke: venv
	$(PY) benchmarks/suite.py --smoke

# Every workload, redisflow and its peers (the `bench` extra; saq and arq get venvs of their
# own under benchmarks/.venvs/), results in benchmarks/results/. A peer that fails to install
# is reported in the table, so a failed install does not stop the run.
bench: venv
	-$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/suite.py

# A wheel in dist/, to install redisflow (and its extras) elsewhere: it is not on PyPI.
# `pip install 'dist/redisflow-<version>-py3-none-any.whl[server]'`
dist: venv
	$(PY) -m pip wheel --no-deps --wheel-dir dist .

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
