#!/usr/bin/env bash
# Run by snakemake --software-deployment-method conda after creating the env (see requirements-nodeps.txt).
pip install --no-deps -r ../requirements-nodeps.txt
