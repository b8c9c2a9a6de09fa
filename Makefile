# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
SNAKEMAKE := $(BIN)/snakemake

.PHONY: venv run dry-run test test-fast bench lint clean

venv: $(VENV)/.installed

# torch is installed on its own first so that no later requirement can pull a CUDA build.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $$(grep -m1 '^torch==' requirements.txt)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

run: venv
	$(SNAKEMAKE) --cores $(CORES) --workflow-profile profiles/default

dry-run: venv
	$(SNAKEMAKE) -n --workflow-profile profiles/default

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not e2e"

bench: venv
	$(BIN)/python -m electrode_ml.bench --results results

lint: venv
	$(SNAKEMAKE) --lint

clean:
	rm -rf results .snakemake
