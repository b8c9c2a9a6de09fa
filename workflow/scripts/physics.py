from electrode_ml.runner import run_step
from electrode_ml.steps import physics_step

run_step(snakemake, physics_step)
