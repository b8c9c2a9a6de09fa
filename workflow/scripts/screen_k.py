from electrode_ml.runner import run_step
from electrode_ml.steps import screen_k_step

run_step(snakemake, screen_k_step)
