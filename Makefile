# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
SNAKEMAKE := $(BIN)/snakemake

.PHONY: venv run dry-run test test-slurm test-fast bench split-spread lint dag clean

venv: $(VENV)/.installed

# torch is installed on its own first so that no later requirement can pull a CUDA build. PyPI's
# Linux torch is the CUDA build (several GB): without a local CPU wheel where pip looks (this project's
# machines have one), `make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes PyTorch's own.
TORCH_INDEX ?=
$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $$(grep -m1 '^torch==' requirements.txt)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

run: venv
	$(SNAKEMAKE) --cores $(CORES) --workflow-profile profiles/default

dry-run: venv
	$(SNAKEMAKE) -n --workflow-profile profiles/default

# The SLURM test has its own target: it needs root and brings up a local cluster.
test: venv
	$(BIN)/python -m pytest -q -m "not slurm"

# The tiny workflow through profiles/slurm on a real local SLURM (tests/cluster/local_slurm.sh, root).
test-slurm: venv
	$(BIN)/python -m pytest -q -m slurm

test-fast: venv
	$(BIN)/python -m pytest -q -m "not e2e and not slurm"

bench: venv
	$(BIN)/python -m electrode_ml.bench --results results --model model1
	$(BIN)/python -m electrode_ml.bench --results results --model model2

# How far the accuracy moves with the random split drawn: 8 splits x 10 networks per model, after
# `make run` (not part of it: 20-40 min per model on one core; `make -j2 split-spread` runs two at once).
SPREAD_MODELS ?= model1 model2 model1_phys
split-spread: $(addprefix split-spread-,$(SPREAD_MODELS))

split-spread-%: venv
	$(BIN)/python -m electrode_ml.split_spread --results results --model $*

lint: venv
	$(SNAKEMAKE) --lint

# The rule graph as SVG (docs/rulegraph.svg); installs Debian's graphviz when `dot` is missing.
dag: venv
	command -v dot >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then s=; else s=sudo; fi; \
		$$s apt-get update -qq && $$s apt-get install -y -qq --no-install-recommends graphviz; }
	mkdir -p docs
	# through temporary files: a failed or killed step leaves the committed SVG as it was
	trap 'rm -f docs/.rulegraph.dot docs/.rulegraph.svg.tmp' EXIT; \
		$(SNAKEMAKE) --rulegraph > docs/.rulegraph.dot && \
		dot -Tsvg docs/.rulegraph.dot > docs/.rulegraph.svg.tmp && \
		mv docs/.rulegraph.svg.tmp docs/rulegraph.svg

clean:
	rm -rf results .snakemake
