# Stage 3: Bayesian optimisation (Ax Client, BoTorch) of the learning rate, widths and dropouts.


rule tune:
    input:
        train=rules.features.output.train,
        val=rules.features.output.val,
    output:
        best=f"{RESULTS}/tune/{{model}}/best_params.json",
        trials=f"{RESULTS}/tune/{{model}}/trials.csv",
        state=f"{RESULTS}/tune/{{model}}/ax_state.json",
    wildcard_constraints:
        model="model1|model2",
    log:
        f"{RESULTS}/logs/tune/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tune/{{model}}.tsv"
    params:
        model=lambda wildcards: wildcards.model,
        tune=config["tune"],
        train=config["train"],
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/tune.py"
