# Two commands do all set-up on a fresh machine:
#   make test    venv + torch + build + pytest      (CI: .ci/run)
#   make bench   venv + torch + build + the microbenchmark (CUDA when present, else CPU)
# and, on a GPU machine with torch already installed (no registry there):
#   make gpu-check   build with the system python3, full tests on CUDA, compute-sanitizer, benchmarks
# Checks: make lint (ruff), make install-check (pip install from another directory, used from outside the checkout),
#   make torchvision-tests TORCHVISION_TESTS=DIR (torchvision's own RoIAlign tests against samdetr_ops.ops)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC := torch==2.14.1 torchvision==0.29.1
DEV_DEPS := pytest hypothesis ninja numpy matplotlib pytest-benchmark tqdm expecttest ruff pycocotools scipy onnx onnxscript onnxruntime kwcoco opencv-python-headless
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

.PHONY: test bench build gpu-check clean lint install-check torchvision-tests convergence

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

# The op microbenchmark, then one SAM-DETR training step and inference, fused vs reference ops (benchmarks/
# bench_model.py; BENCH_MODEL_ARGS="--repeats 2" for a quicker run, SKIP_MODEL_BENCH=1 to leave it out).
BENCH_MODEL_ARGS ?=
bench: build
	$(PY) -m benchmarks.bench $(BENCH_ARGS)
	$(if $(SKIP_MODEL_BENCH),,$(PY) -m benchmarks.bench_model $(BENCH_MODEL_ARGS))

# DETR, DAB-DETR, DAB-DETR + aligner, SAM-DETR, SAM-DETR + SMCA trained alike on the synthetic dataset, 2 seeds:
# AP per epoch in benchmarks/results/convergence-synthetic.{csv,png} (CPU, about 40 min on 2 busy cores;
# CONVERGENCE_ARGS="--epochs 12 --train 200" for a longer run; CONVERGENCE_ARGS="--dataset kwcoco" for the second
# dataset, kwcoco's toy shapes: benchmarks/results/convergence-kwcoco.*).
CONVERGENCE_ARGS ?=
convergence: build
	nice $(PY) -m benchmarks.convergence $(CONVERGENCE_ARGS)

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .

# `pip install --no-build-isolation .` run from another directory into a scratch target (the shared venv is left
# alone), then the installed package used from a third directory: it must import without the checkout and run.
# Builds the extension from scratch (minutes).
INSTALL_CHECK_DIR ?= /tmp/samdetr_ops-install-check
install-check: $(VENV)/.deps
	rm -rf $(INSTALL_CHECK_DIR) && mkdir -p $(INSTALL_CHECK_DIR)/site $(INSTALL_CHECK_DIR)/run
	cd $(INSTALL_CHECK_DIR) && PYTHONPATH= $(CURDIR)/$(PY) -m pip install -q --no-build-isolation --no-deps \
		--target $(INSTALL_CHECK_DIR)/site $(CURDIR)
	cd $(INSTALL_CHECK_DIR)/run && PYTHONPATH=$(INSTALL_CHECK_DIR)/site $(CURDIR)/$(PY) $(CURDIR)/tests/installed_smoke.py \
		$(INSTALL_CHECK_DIR)/site

# torchvision's own RoIAlign tests (its test/test_ops.py with test/common_utils.py beside it) run against
# samdetr_ops.ops.roi_align / RoIAlign through tests/torchvision_adapter.py. The copy of torchvision's tests is not
# part of this repository and nothing is downloaded here: README, "torchvision's tests", says how to get one.
TORCHVISION_TESTS ?=
torchvision-tests: build
	@test -n "$(TORCHVISION_TESTS)" -a -f "$(TORCHVISION_TESTS)/test_ops.py" -a -f "$(TORCHVISION_TESTS)/common_utils.py" \
		|| { echo "set TORCHVISION_TESTS to a folder holding torchvision's test_ops.py and common_utils.py"; exit 2; }
	cd $(TORCHVISION_TESTS) && PYTHONPATH=$(CURDIR):$(CURDIR)/tests $(CURDIR)/$(PY) -m pytest -p torchvision_adapter \
		-p no:cacheprovider test_ops.py -k TestRoIAlign -rs -q $(PYTEST_ARGS)

# GPU machine: its own python3 and torch (no venv, no registry), one command, about ten minutes.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build samdetr_ops/_C*.so samdetr_ops/.built-* *.egg-info

# `make demo`: from nothing to a trained detector, offline, on a CPU: a synthetic COCO-layout dataset, a short
# training run of a reduced SAM-DETR (the full configuration stays models.train's default), its evaluation,
# loss/AP curves and a few images with their detections drawn, all under demo/ (ignored by git).
# One compute thread plus one data-loading process: on a shared 2-core machine, two OpenMP threads per process
# spin-wait and ran 7x slower per step than one (measured).
DEMO_THREADS ?= 1
DEMO_THRESHOLD ?= 0.2
DEMO_DATA_ARGS ?= --train 240 --val 50 --size 128 --seed 0 --max_objects 3
# No ImageNet weights can be downloaded, so the demo trains a ResNet-18 from scratch, with ordinary (trainable)
# BatchNorm (a random ResNet-50 kept frozen cannot learn features). About 10 min on an idle 2-core CPU; it does not
# reach a useful AP in that time yet (AP50 0.011 measured: README, "Train, evaluate, predict").
DEMO_TRAIN_ARGS ?= --image_scale 0.16 --backbone resnet18 --backbone_norm batch --lr_backbone 1e-3 \
	--hidden_dim 64 --nheads 4 --dim_feedforward 256 --enc_layers 1 --dec_layers 3 --num_queries 10 --dropout 0 \
	--batch_size 4 --lr 1e-3 --epochs 12 --lr_drop 10 --num_workers 1
.PHONY: demo
demo: build
	rm -rf demo/run demo/predictions
	$(PY) -m models.synthetic demo/data $(DEMO_DATA_ARGS)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) -m models.train --coco_path demo/data --output_dir demo/run --device cpu \
		$(DEMO_TRAIN_ARGS)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) -m models.predict demo/data/val2017/00000[1-6].png \
		--checkpoint demo/run/checkpoint.pth --out demo/predictions --threshold $(DEMO_THRESHOLD) --device cpu
