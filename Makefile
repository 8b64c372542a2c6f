# `make demo` and `make test` set up .venv when it is missing, then do their job.
#
# Which build of torch goes into .venv is chosen here, not left to pip:
#   make setup TORCH=cpu    the CPU build (.venv 1.9 GB, torch itself 754 MB); the default where
#                           nvidia-smi is not found
#   make setup TORCH=cuda   PyPI's default Linux build with its CUDA libraries (torch alone ~5.5 GB); default
#                           where nvidia-smi is found
# On Linux x86_64 a plain `pip install torch` takes the CUDA build. TORCH=cpu asks for torch==VERSION+cpu:
# first from pip's own configuration (a local wheel, a mirror), then from TORCH_CPU_INDEX, PyTorch's
# CPU wheel index; on macOS and aarch64, where PyPI's build is the CPU one, plain torch==VERSION.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sslseg-installed
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PIP := $(BIN)/python -m pip install --quiet

.PHONY: demo demo-quick test lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, the build chosen by TORCH, so that nothing else pulls another one
	@echo "installing torch $(TORCH_VERSION), $(TORCH) build (make setup TORCH=cpu|cuda)"
ifeq ($(TORCH),cpu)
	$(PIP) torch==$(TORCH_VERSION)+cpu 2>/dev/null \
	  || $(PIP) torch==$(TORCH_VERSION)+cpu --extra-index-url $(TORCH_CPU_INDEX) 2>/dev/null \
	  || { [ "$$(uname -s)-$$(uname -m)" != "Linux-x86_64" ] && $(PIP) torch==$(TORCH_VERSION); } \
	  || { echo "no CPU build of torch $(TORCH_VERSION) found (tried pip's index and $(TORCH_CPU_INDEX)); \
	  make setup TORCH=cuda takes the CUDA build" >&2; exit 1; }
else ifeq ($(TORCH),cuda)
	$(PIP) torch==$(TORCH_VERSION)
else
	@echo "TORCH must be cpu or cuda, got '$(TORCH)'" >&2; exit 2
endif
	$(PIP) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sslseg demo --out sslseg-demo

demo-quick: $(STAMP)
	$(BIN)/sslseg demo --quick --out sslseg-demo-quick

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf sslseg-demo sslseg-demo-quick .pytest_cache
