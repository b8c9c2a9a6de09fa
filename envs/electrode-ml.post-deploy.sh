#!/usr/bin/env bash
# Run by snakemake --software-deployment-method conda inside the environment it has just created
# from electrode-ml.yaml, as the Makefile installs requirements-nodeps.txt: with --no-deps, because
# matminer pins pandas<3 while the Magpie featuriser the peer baseline uses works with pandas 3.
# The pin is written out: Snakemake runs a copy of this script from .snakemake/conda/, in its
# working directory, so a path to requirements-nodeps.txt would not resolve
# (tests/test_conda_env.py checks the two agree).
set -eu
python -m pip install --no-deps matminer==0.10.1
