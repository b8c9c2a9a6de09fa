# Stage 2: feature sets 1 and 2 (paper Table 1), transformers fitted on the training split only.


rule features:
    input:
        electrodes=rules.data.output.electrodes,
        split=rules.split.output.split,
    output:
        train=f"{RESULTS}/features/{{model}}/train.parquet",
        val=f"{RESULTS}/features/{{model}}/val.parquet",
        test=f"{RESULTS}/features/{{model}}/test.parquet",
        transformers=f"{RESULTS}/features/{{model}}/transformers.joblib",
        description=f"{RESULTS}/features/{{model}}/features.json",
    wildcard_constraints:
        model=NETWORK_MODELS,
    log:
        f"{RESULTS}/logs/features/{{model}}.log",
    params:
        code=CODE_VERSION["features"],
        model=lambda wildcards: wildcards.model,
        features=lambda wildcards: model_feature_settings(config["features"], wildcards.model),
    threads: 1
    priority: LONG_JOB_PRIORITY
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/features.py"
