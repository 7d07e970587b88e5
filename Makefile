# The two commands of the README. Both create .venv when missing and install the package into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# XLA compiles dominate the smoke runs: share every compiled program across test processes
# (notebook kernels, subprocesses; caching the fast ones too took notebooks 01-06 from 220 to
# 196 s cold), and compile the tests' programs with LLVM's optimisation off (from a cold cache:
# tests/test_student.py 56 -> 44 CPU s, the MinAtar suite's smoke run 171 -> 144; the smoke
# budgets' programs run too briefly for slower code to cost more than the compiling saves).
JAX_CACHE := JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.venv/jax-cache \
	JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
TEST_XLA := XLA_FLAGS="$(XLA_FLAGS) --xla_backend_optimization_level=0"

.PHONY: demo test test-notebooks test-long lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The loss comparison on the quick budget's games and seeds, with 8x the data and 10x the updates
# of the quick budget (which stays short for the notebooks): about 20-40 minutes on 2 cores (see
# the README). Other stages add to the same folder: `distill reproduce ... --stages compression`.
DEMO_BUDGET := --dataset-states 262144 --updates 10000 --eval-every 2000 --fixed-updates 2000
demo: $(STAMP)
	$(BIN)/distill reproduce --suite minatar --budget quick $(DEMO_BUDGET) --out runs/demo \
		--stages teachers,losses

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DISTILL_BUDGET=smoke $(JAX_CACHE) $(TEST_XLA) $(BIN)/pytest -q --nbmake tests notebooks

# every notebook at the default budget (quick), as a student runs it: its checks must pass there
# too before a change to a notebook lands (minutes per notebook on a CPU; not in `make test`)
# the integration tests too long for `make test` (large-teacher compression, five-game multi-task,
# the Atari suite at smoke)
test-long: $(STAMP)
	DISTILL_BUDGET=smoke $(JAX_CACHE) $(BIN)/pytest -q -m long tests

test-notebooks: $(STAMP)
	$(JAX_CACHE) $(BIN)/pytest -q -m quick_budget tests/test_notebooks.py

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache .ruff_cache
