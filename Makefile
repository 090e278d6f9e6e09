# `make demo` runs the main job; `make test` runs the tests. Both create .venv on first use.
PY ?= python3
# Which torch build to install (see the README's "Install"). On a plain Linux machine PyPI's
# torch==2.13.0 is the CUDA build (torch plus triton and the nvidia-* runtime wheels, several GB);
# TORCH_INDEX=https://download.pytorch.org/whl/cpu takes PyTorch's CPU-only build (~200 MB) instead.
# Machines whose pip is configured with a local CPU wheel (the project's dev boxes) get that either way.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint compare clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, as chosen above; the package's own range (torch>=2.3,<2.14) then installs nothing more
	$(BIN)/pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spikeconverter demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

# optional peers for benchmarks/vs_spikingjelly.py, installed without their dependencies
compare: $(STAMP)
	$(BIN)/pip install -q --no-deps spikingjelly==2.0.0
	$(BIN)/pip install -q -e '.[compare]'

clean-venv:
	rm -rf $(VENV)
