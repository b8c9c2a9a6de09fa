from electrode_ml.runner import run_step
from electrode_ml.steps import voltage_trees_step

run_step(snakemake, voltage_trees_step)
