from electrode_ml.runner import run_step
from electrode_ml.steps import data_step

run_step(snakemake, data_step)
