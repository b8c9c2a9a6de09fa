from electrode_ml.runner import run_step
from electrode_ml.steps import feature_contribution_step

run_step(snakemake, feature_contribution_step)
