# quantswap developer tasks. `make test` sets everything up on a fresh machine and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are installed first, pinned to a pair known to import together; override on
# other machines, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test test-giants lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-giants: $(STAMP)
	$(BIN)/python -m pytest -q -m giant tests/test_zoo.py

lint: $(STAMP)
	$(BIN)/ruff check quantswap tests benchmarks
	$(BIN)/ruff format --check quantswap tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/swap_overhead.py --output BENCHMARKS.md

clean:
	rm -rf $(VENV) build *.egg-info
