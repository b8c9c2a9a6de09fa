from electrode_ml.runner import run_step
from electrode_ml.steps import features_step

run_step(snakemake, features_step)
