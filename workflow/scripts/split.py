from electrode_ml.runner import run_step
from electrode_ml.steps import split_step

run_step(snakemake, split_step)
