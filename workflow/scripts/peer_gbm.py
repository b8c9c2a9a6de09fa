from electrode_ml.runner import run_step
from electrode_ml.steps import peer_gbm_step

run_step(snakemake, peer_gbm_step)
