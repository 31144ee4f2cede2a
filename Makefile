# Two entry points that work on a fresh machine with only Python 3.10+:
#   make quickstart   set up .venv and train on the bundled quick-start data
#   make test         set up .venv and run the tests
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# The CPU build of torch; set TORCH_SPEC="torch" (or a CUDA index) on GPU machines.
TORCH_SPEC ?= torch==2.13.0
# Python sources to lint (folders that exist)
LINT_PATHS = $(wildcard fastchgnet tests bench launcher)

.PHONY: setup quickstart predict-demo test test-slow lint bench clean gpu-wheels gpu-check-cpu

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

# the main job: train a small model on the bundled quick-start data, print the MAE table
# on two threads (QUICKSTART_THREADS): the same numbers as one, 3 min 59 s instead of 5 min 16 s
# on the idle 2-core machine; a training run's own default stays one thread (RunConfig.threads)
QUICKSTART_THREADS ?= 2
quickstart: setup
	$(BIN)/python launcher/train.py --overwrite --set run.threads=$(QUICKSTART_THREADS)

# predict a crystal the package builds, with the pretrained CHGNet 0.3.0 weights
predict-demo: setup
	$(BIN)/python -m fastchgnet.predict_demo

# TEST_WORKERS pytest-xdist processes (one torch thread each, see tests/conftest.py); 0: one
# process, in order
TEST_WORKERS ?= 2
PYTEST = $(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS))

test: setup
	$(PYTEST) -m "not slow"

# pytest exits 5 when no test is selected: not a failure for this second step
test-slow: setup
	$(PYTEST) -m slow || [ $$? -eq 5 ]

lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

bench: setup
	$(BIN)/python bench/bench_graph.py
	$(BIN)/python bench/bench_inference.py
	$(BIN)/python bench/bench_sampler.py
	$(BIN)/python bench/bench_md.py
	$(BIN)/python bench/bench_relax.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_train_step.py

# wheels for bench/gpu_check.sh on a GPU machine without network (cp312, manylinux x86_64)
gpu-wheels: setup
	PY=$(BIN)/python bench/gpu_wheels.sh

# every stage of the GPU acceptance script on the CPU (aot_eager backend); run in CI
gpu-check-cpu: setup
	PYTHON=$(abspath $(BIN)/python) bench/gpu_check.sh --cpu

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
