from electrode_ml.runner import run_step

run_step(snakemake, "group_evaluation_step")
