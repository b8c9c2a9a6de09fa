from electrode_ml.runner import run_step

run_step(snakemake, "screen_k_step")
