# Two commands on a fresh machine:  `make reproduce`  and  `make test`.
# Both create the virtual environment on first use (about two minutes), then reuse it.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Tools run as `python -m <tool>`, never through pip's launcher scripts: their shebang lines
# break in a checkout whose path holds a `$` (the shell expands it).
STAMP  := $(VENV)/.installed
PAPER  ?= glow
TARGET ?= reproduce_$(PAPER)
CORES  ?= 2
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup reproduce test bench lint format mlflow-ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

## Run the main job (Glow at the cpu profile, offline) and regenerate reports/$(PAPER).md.
## Other papers: make reproduce PAPER=nice; everything and reports/README.md: make reproduce TARGET=all
reproduce: setup
	$(BIN)/python -m snakemake $(TARGET) --cores $(CORES) --workflow-profile pipelines/profiles/local

## Lint, format check and the whole test suite
test: setup
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m pytest

## Speed against zuko, nflows, normflows and FrEIA (installs them, an optional extra); writes
## reports/performance.md. A few minutes; run it on a quiet machine.
bench: setup
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python -m benchmarks.run --out reports/performance.md

lint: setup
	$(BIN)/python -m ruff check --fix .
	$(BIN)/python -m ruff format .

mlflow-ui: setup
	$(BIN)/python -m mlflow ui --backend-store-uri "sqlite:///$$PWD/runs/mlflow.db" --host 127.0.0.1

clean:
	rm -rf runs .snakemake reports/smoke reports/paper
