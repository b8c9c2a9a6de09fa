from electrode_ml.runner import run_step

run_step(snakemake, "physics_step")
