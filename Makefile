# gpuflow: two commands for a newcomer (`make run`, `make test`), plus the lock, lint and benchmarks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gpuflow-installed
# Workers for the test suite: "auto" is one per core, at least 2 (most tests wait on servers, not the CPU).
TEST_WORKERS ?= auto
PYTEST_ARGS ?=

.PHONY: install lock lock-check run test test-fast lint bench clean

# Install exactly what requirements.lock says (no resolver at install time), one line per phase with timings.
$(STAMP): pyproject.toml requirements.lock tools/lock.py
	$(PYTHON) tools/lock.py install --venv $(VENV)
	@touch $(STAMP)

install: $(STAMP)

# Resolve pyproject.toml into requirements.lock (uv, from PyPI, into the virtualenv when it is missing).
lock:
	@test -x $(VENV)/bin/uv || { test -x $(PY) || $(PYTHON) -m venv $(VENV); $(PY) -m pip install --quiet uv; }
	$(PYTHON) tools/lock.py compile --uv $(VENV)/bin/uv

# Fails, naming `make lock`, when pyproject.toml's dependencies changed after the lock was written.
lock-check:
	$(PYTHON) tools/lock.py check

# The whole pipeline (prepare -> train -> evaluate -> rollout) on the bundled digits data and the embedded
# defaults. Canary steps of 10 s (the policy's default is 60 s) keep a repeated `make run` short.
run: $(STAMP)
	$(VENV)/bin/gpuflow run --canary-seconds 10

# The whole suite in parallel workers, a module's tests on one worker, the longest modules first (the order
# tests/conftest.py gives; xdist would otherwise reorder modules by their number of tests); the 15 slowest tests
# are listed at the end.
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

# The unit tests only: the edit loop.
test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -m bench.bench_prepare
	$(PY) -m bench.bench_telemetry
	$(PY) -m bench.bench_canary
	$(PY) -m bench.bench_serve
	$(PY) -m bench.bench_trigger
	$(PY) -m bench.bench_run

clean:
	rm -rf .gpuflow .pytest_cache .mypy_cache .ruff_cache
