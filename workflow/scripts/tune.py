from electrode_ml.runner import run_step
from electrode_ml.steps import tune_step

run_step(snakemake, tune_step)
