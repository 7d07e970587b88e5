# The two commands of the README. Both create .venv when missing and install the package into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# XLA compiles dominate the smoke runs: share compiled programs across test processes.
JAX_CACHE := JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.venv/jax-cache \
	JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The loss comparison at the quick budget (20-40 minutes on 2 cores by the README's estimate); the
# other stages add to the same folder: `distill reproduce ... --stages compression` (its
# same-size students are the loss comparison's KL students, read back from runs/demo/students).
demo: $(STAMP)
	$(BIN)/distill reproduce --suite minatar --budget quick --out runs/demo --stages teachers,losses

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DISTILL_BUDGET=smoke $(JAX_CACHE) $(BIN)/pytest -q --nbmake tests notebooks

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache .ruff_cache
