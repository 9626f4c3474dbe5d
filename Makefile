# edgeplane developer commands. `make test` is what CI runs (.ci/run).
PY ?= python3
PIP := $(PY) -m pip

.PHONY: install deps services lint test test-unit bench up

install:
	$(PIP) install -q -e .

deps:
	bash scripts/system-deps.sh
	$(PIP) install -q -e '.[test]'

services:
	bash scripts/services.sh

lint:
	ruff check src tests
	ruff format --check src tests
	mypy

# The whole suite: installs what tests need, checks style and types, runs every layer.
# pytest exits 5 when it collects nothing, which fails this target on purpose.
test: deps services lint
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit:
	$(PY) -m pytest -q tests/unit

# Benchmarks (not tests): edgeplane, Celery and Dramatiq side by side in one run (installs
# the peers and matplotlib for the benchmark only); `make bench BENCH_ARGS=--quick` to try it.
bench: install
	$(PY) -m bench.suite $(BENCH_ARGS)

up: install
	edgeplane up
