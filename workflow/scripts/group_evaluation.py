from electrode_ml.runner import run_step
from electrode_ml.steps import group_evaluation_step

run_step(snakemake, group_evaluation_step)
