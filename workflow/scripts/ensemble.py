from electrode_ml.runner import run_step
from electrode_ml.steps import ensemble_step

run_step(snakemake, ensemble_step)
