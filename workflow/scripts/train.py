from electrode_ml.runner import run_step

run_step(snakemake, "train_step")
