from electrode_ml.runner import run_step
from electrode_ml.steps import screen_na_step

run_step(snakemake, screen_na_step)
