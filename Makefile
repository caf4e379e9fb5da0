# Quickstart: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench clean gpu-bundle gpu-rehearsal

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]" "$(TORCH_SPEC)"
	touch $(STAMP)

demo: install
	$(BIN)/w2vkit demo

test: install
	$(BIN)/python -m pytest -q

# The gate every change passes (.ci/run calls it): ruff lint + format check, mypy on the package.
lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: install
	$(BIN)/python bench/data_throughput.py

# Wheels for the borrowed GPU machine (cp312, no network there) and w2vkit's own, in .gpu-bundle/;
# then, in the window: bash bench/gpu_window.sh OUT_DIR (bench/README.md, "A GPU window").
gpu-bundle: install
	PYTHON=$(BIN)/python bash bench/gpu_bundle.sh

# The window's every stage on this CPU, in a fresh venv of the machine's packages plus the bundle.
gpu-rehearsal:
	rm -rf runs/gpu-rehearsal && bash bench/gpu_rehearsal.sh runs/gpu-rehearsal/work runs/gpu-rehearsal/out

clean:
	rm -rf $(VENV) runs/ .pytest_cache
