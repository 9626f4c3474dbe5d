# edgeplane developer commands. `make test` is what CI runs (.ci/run).
PY ?= python3
PIP := $(PY) -m pip
# The tests keep their own environment: a venv in .venv-test that sees the system's
# packages (nothing is downloaded twice) and holds its own editable edgeplane and the test
# extras, so `make test` never swaps the edgeplane a running `edgeplane up` was started from.
VENV ?= .venv-test
TPY := $(VENV)/bin/python

.PHONY: install deps services lint test test-unit bench bench-fl up

install:
	$(PIP) install -q -e .

$(TPY):
	$(PY) -m venv --system-site-packages $(VENV)

# System packages (scripts/system-deps.sh says which) and, into $(VENV) only, edgeplane
# (editable) with its test extras.
deps: $(TPY)
	bash scripts/system-deps.sh
	@echo "installing edgeplane[test] (editable) into $(VENV)"
	$(TPY) -m pip install -q -e '.[test]'

services:
	bash scripts/services.sh

lint: $(TPY)
	$(TPY) -m ruff check src tests
	$(TPY) -m ruff format --check src tests
	$(TPY) -m mypy

# The whole suite: installs what tests need, checks style and types, runs every layer.
# pytest exits 5 when it collects nothing, which fails this target on purpose.
# Three xdist workers, a test file per worker at a time (module fixtures stay whole): most
# tests wait on real processes, brokers and registries, so the suite took 12.5 min this way
# against well over 20 one at a time (2 cores). pytest-benchmark, if the system has it,
# refuses to run beside xdist: it is switched off (bench/ measures, tests do not).
PYTEST_JOBS ?= 3
test: deps services lint
	$(TPY) -m pytest -q -p no:cacheprovider -p no:benchmark -n $(PYTEST_JOBS) --dist loadfile tests

test-unit: $(TPY)
	$(TPY) -m pytest -q tests/unit

# Benchmarks (not tests): edgeplane, Celery and Dramatiq side by side in one run (installs
# the peers and matplotlib for the benchmark only); `make bench BENCH_ARGS=--quick` to try it.
bench: install
	$(PY) -m bench.suite $(BENCH_ARGS)

# Federated learning beside Flower (bench/fl.py; minutes, so not part of `make bench`):
# edgeplane with its fl extra (the coordinator needs numpy and scikit-learn); Flower goes
# into a venv of its own, bench/.venv-flower, for the benchmark only.
bench-fl:
	$(PIP) install -q -e '.[fl]'
	$(PY) -m bench.fl $(BENCH_ARGS)

up: install
	edgeplane up
