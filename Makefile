# Two commands do all set-up on a fresh machine:
#   make test    venv + torch + build + pytest      (CI: .ci/run)
#   make bench   venv + torch + build + the microbenchmark (CUDA when present, else CPU)
# and, on a GPU machine with torch already installed (no registry there):
#   make gpu-check   build with the system python3, full tests on CUDA, compute-sanitizer, benchmarks
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC := torch==2.14.1 torchvision==0.29.1
DEV_DEPS := pytest ninja numpy matplotlib pytest-benchmark tqdm expecttest
CSRC := $(shell find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh')
BENCH_ARGS ?=
PYTEST_ARGS ?=

# The `nvcc` on PATH may be a wrapper from which torch guesses the wrong toolkit root.
ifeq ($(origin CUDA_HOME), undefined)
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME := /usr/local/cuda
endif
endif
# Tests and benchmarks import the in-place build from this checkout.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: test bench build gpu-check clean

$(VENV)/.deps: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC) $(DEV_DEPS)
	touch $@

# ninja rebuilds only what changed; FORCE_CUDA=1 compiles the CUDA kernels without a GPU (CI does). The stamp
# names the flag, so switching it rebuilds.
BUILT := samdetr_ops/.built-force-cuda-$(or $(FORCE_CUDA),0)
$(BUILT): $(VENV)/.deps setup.py $(CSRC)
	rm -f samdetr_ops/.built-*
	$(PY) setup.py -q build_ext --inplace
	touch $@

build: $(BUILT)

test: build
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: build
	$(PY) -m benchmarks.bench $(BENCH_ARGS)

# GPU machine: its own python3 and torch (no venv, no registry), one command, about ten minutes.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build samdetr_ops/_C*.so samdetr_ops/.built-*
