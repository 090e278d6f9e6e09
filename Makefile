# `make demo` runs the main job; `make test` runs the tests. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint compare clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned exactly: a looser spec could pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
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
