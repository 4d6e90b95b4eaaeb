# facefoundry: `make demo` and `make test` each set up .venv (idempotent) first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.facefoundry-installed
export FACEFOUNDRY_DATA_DIR ?= $(abspath ../shared/data)
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test lint format bench bench-quick clean

setup: $(STAMP)

# Re-installs only when the dependency ranges or the pinned versions change; a second run
# is a no-op. constraints.txt pins every version (torch 2.13.0: the CPU build where pip finds it).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt insightface
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/facefoundry run recipes/demo.yaml --out runs
	@echo "report: runs/demo/report/report.html"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# only the benches that have a quick mode (the long identity studies have none)
bench-quick: $(STAMP)
	for b in $$(grep -l -- '"--quick"' benchmarks/bench_*.py); do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
