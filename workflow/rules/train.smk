# Stage 4: the tuned network trained once per Monte Carlo seed (one job each, one GPU each on CUDA).


rule train:
    input:
        train=rules.features.output.train,
        val=rules.features.output.val,
        test=rules.features.output.test,
        params=rules.tune.output.best,
    output:
        model=f"{RESULTS}/train/{{model}}/seed_{{seed}}/model.pt",
        history=f"{RESULTS}/train/{{model}}/seed_{{seed}}/history.csv",
        predictions=f"{RESULTS}/train/{{model}}/seed_{{seed}}/predictions.parquet",
    wildcard_constraints:
        model=NETWORK_MODELS,
        seed=r"0|[1-9]\d*",  # seed_07 would train seed 7 again into a stray folder
    log:
        f"{RESULTS}/logs/train/{{model}}/seed_{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/seed_{{seed}}.tsv"
    params:
        code=CODE_VERSION["train"],
        train=lambda wildcards: model_train_settings(config["train"], wildcards.model),
    threads: 1
    priority: lambda wildcards: LONG_JOB_PRIORITY if wildcards.model == CONTRIBUTION_MODEL and int(wildcards.seed) in CONTRIBUTION_TRAINED_SEEDS else 0
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/train.py"
