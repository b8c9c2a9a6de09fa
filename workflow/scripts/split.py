from electrode_ml.runner import run_step

run_step(snakemake, "split_step")
