from electrode_ml.runner import run_step
from electrode_ml.steps import timing_step

run_step(snakemake, timing_step)
