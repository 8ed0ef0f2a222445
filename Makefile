# gpuflow: two commands for a newcomer (`make run`, `make test`), plus lint and benchmarks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gpuflow-installed
PYTEST_ARGS ?=

.PHONY: install run test lint bench clean

# Create the virtualenv when missing and install gpuflow with its dev extras into it.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The whole pipeline (prepare -> train -> evaluate -> rollout) on the bundled digits data and the embedded
# defaults. Canary steps of 10 s (the policy's default is 60 s) keep a repeated `make run` short.
run: $(STAMP)
	$(VENV)/bin/gpuflow run --canary-seconds 10

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

bench: $(STAMP)
	$(PY) -m bench.bench_prepare
	$(PY) -m bench.bench_telemetry
	$(PY) -m bench.bench_canary
	$(PY) -m bench.bench_serve
	$(PY) -m bench.bench_trigger
	$(PY) -m bench.bench_run

clean:
	rm -rf .gpuflow .pytest_cache .mypy_cache .ruff_cache
