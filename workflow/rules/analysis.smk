# Stage 7: feature contribution of feature set 2 (Eq. 9, Fig 6) and the timings of Table 4.


# One job: a network per left-out feature group (8 groups), each trained with
# analysis.contribution_seeds seeds using the tuned parameters and the train section's recipe; the
# full network of each seed is the train job's (trained here only for seeds beyond train.n_seeds).
rule feature_contribution:
    input:
        train=f"{RESULTS}/features/{CONTRIBUTION_MODEL}/train.parquet",
        val=f"{RESULTS}/features/{CONTRIBUTION_MODEL}/val.parquet",
        test=f"{RESULTS}/features/{CONTRIBUTION_MODEL}/test.parquet",
        params=f"{RESULTS}/tune/{CONTRIBUTION_MODEL}/best_params.json",
        trained=expand(f"{RESULTS}/train/{CONTRIBUTION_MODEL}/seed_{{seed}}/predictions.parquet", seed=CONTRIBUTION_TRAINED_SEEDS),
    output:
        summary=f"{RESULTS}/analysis/feature_contribution.csv",
        per_seed=f"{RESULTS}/analysis/feature_contribution_seeds.csv",
        figure=report(
            f"{RESULTS}/analysis/feature_contribution.png",
            caption="../report/feature_contribution.rst",
            category="Analysis",
        ),
    log:
        f"{RESULTS}/logs/analysis/feature_contribution.log",
    benchmark:
        f"{RESULTS}/benchmarks/analysis/feature_contribution.tsv"
    params:
        code=CODE_VERSION["feature_contribution"],
        model=CONTRIBUTION_MODEL,
        seeds=contribution_seeds(config),
        train=model_train_settings(config["train"], CONTRIBUTION_MODEL),
    threads: 1
    priority: LONG_JOB_PRIORITY
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/feature_contribution.py"


rule timing:
    input:
        tune=expand(f"{RESULTS}/benchmarks/tune/{{model}}.tsv", model=BASE_MODELS),
        trials=expand(f"{RESULTS}/tune/{{model}}/trials.csv", model=BASE_MODELS),
        train=expand(f"{RESULTS}/benchmarks/train/{{model}}/seed_{{seed}}.tsv", model=BASE_MODELS, seed=SEEDS),
        electrodes=rules.data.output.electrodes,
        split=rules.split.output.split,
        transformers=expand(f"{RESULTS}/features/{{model}}/transformers.joblib", model=BASE_MODELS),
        checkpoints=expand(f"{RESULTS}/train/{{model}}/seed_{{seed}}/model.pt", model=BASE_MODELS, seed=SEEDS),
        physics=expand(f"{RESULTS}/physics/{{model}}/physics.joblib", model=PHYSICS_MODELS),
        trees=expand(f"{RESULTS}/physics/{{model}}/voltage_trees.joblib", model=VOLTAGE_TREE_MODELS),
        metrics=expand(f"{RESULTS}/ensemble/{{model}}/metrics.json", model=MODELS),
    output:
        timing=f"{RESULTS}/analysis/timing.csv",
    log:
        f"{RESULTS}/logs/analysis/timing.log",
    params:
        code=CODE_VERSION["timing"],
        models=MODELS,
        tune=tune_settings(config["tune"]),
        train=config["train"],
        repeats=20,
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/timing.py"
