# medseg developer entry points. `make demo` and `make test` create/refresh .venv themselves.
#
# torch is installed first, from the CPU index, so that pip never pulls the multi-GB CUDA
# stack. On a machine with an NVIDIA GPU use instead:
#   make TORCH_INDEX=https://download.pytorch.org/whl/cu128 demo
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.medseg-installed
DEMO_OUT ?= demo_output

.PHONY: demo test lint format bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --retries 1 "torch==$(TORCH_VERSION)" --extra-index-url $(TORCH_INDEX)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medseg demo --out $(DEMO_OUT) --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean-venv:
	rm -rf $(VENV)
