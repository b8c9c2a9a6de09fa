from electrode_ml.runner import run_step
from electrode_ml.steps import report_step

run_step(snakemake, report_step)
