from electrode_ml.runner import run_step
from electrode_ml.steps import train_step

run_step(snakemake, train_step)
