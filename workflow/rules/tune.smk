# Stage 3: Bayesian optimisation (Ax Client, BoTorch) of the learning rate, widths and dropouts.


rule tune:
    input:
        train=rules.features.output.train,
        val=rules.features.output.val,
    output:
        best=f"{RESULTS}/tune/{{model}}/best_params.json",
        trials=f"{RESULTS}/tune/{{model}}/trials.csv",
    wildcard_constraints:
        model=NETWORK_MODELS,
    log:
        f"{RESULTS}/logs/tune/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tune/{{model}}.tsv"
    params:
        code=CODE_VERSION["tune"],
        model=lambda wildcards: wildcards.model,
        # Saved after every trial. Deliberately not an output: Snakemake deletes the outputs of
        # an interrupted job, and this file is what lets the rerun resume instead of start over.
        state=lambda wildcards: f"{RESULTS}/tune/{wildcards.model}/ax_state.json",
        tune=tune_settings(config["tune"]),
        train=lambda wildcards: model_train_settings(config["train"], wildcards.model),
    threads: 1
    priority: LONG_JOB_PRIORITY
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/tune.py"
